"""Password hashing for the web login: argon2id through argon2-cffi (the reference
implementation's bindings), with its default parameters (RFC 9106's second
recommendation: 64 MiB, 3 passes)."""

from __future__ import annotations

from typing import Any

from gptstore.errors import InvalidRequest

MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; this only stops absurd inputs
#: a hash of a throw-away password: a login for an unknown user verifies against it, so
#: both failures take the same time
_DUMMY: str | None = None


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidRequest(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters",
                             param="password")
    return str(_hasher().hash(password))


def verify_password(stored: str | None, password: str) -> bool:
    from argon2.exceptions import InvalidHashError, VerificationError

    global _DUMMY
    if stored is None:
        if _DUMMY is None:
            _DUMMY = hash_password("not-a-password-of-anyone")
        stored, password = _DUMMY, password + "-"
    try:
        return bool(_hasher().verify(stored, password))
    except (VerificationError, InvalidHashError):
        return False
