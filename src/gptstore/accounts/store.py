"""Users, organisations, memberships and API keys in the database.

- `add_user`, `add_org`, `add_member`: a user or an organisation is an account whose
  name is also a namespace; creating one creates (or claims, if nobody owns it) the
  namespace row, so everything published there belongs to the account.
- `create_key` makes a random key (`gsk_<id>_<secret>`, 256 random bits of secret),
  returns it once and stores only the SHA-256 of the secret; `authenticate(key)` finds
  the row by the id part and compares hashes in constant time, then builds the
  `Principal` (scope, organisation roles, peers) the rest of the store reads.
- Passwords (for the web login) are hashed with argon2id (argon2-cffi).

Why SHA-256 and not argon2 for keys: a key's secret is 256 random bits, so no guessing
attack exists for a slow hash to slow down, while every request checks a key (argon2 costs
~50 ms and 64 MiB each time). Passwords are chosen by people and get argon2id.

Knows nothing of HTTP; the API (api/auth.py) and the CLI (cli/accounts.py) call it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gptstore.accounts.tables import Account, ApiKey, Membership
from gptstore.catalog.access import LEVELS, Level, Principal
from gptstore.catalog.names import MAX_PART, parse_ref
from gptstore.catalog.tables import Namespace
from gptstore.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from gptstore.storage.db import Database

KEY_PREFIX = "gsk_"
_KEY_RE = re.compile(r"^gsk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
#: what a failed key check says, whichever part failed (no oracle for key ids)
BAD_KEY = ("the API key is missing, unknown, revoked or expired: send "
           "`Authorization: Bearer <key>` with a key from `gptstore keys create USER`")


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they are stored in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_level(value: str, what: str) -> Level:
    if value not in LEVELS:
        raise InvalidRequest(f"{what} {value!r} is not one of {', '.join(LEVELS)}", param=what)
    return value  # type: ignore[return-value]


def check_account_name(name: str) -> str:
    """An account name is a namespace name (letters, digits, `.`, `_`, `-`)."""
    try:
        parse_ref(f"{name}/x", allow_version=False)
    except InvalidRequest:
        raise InvalidRequest(
            f"account name {name!r} is invalid: use letters, digits, '.', '_' and '-', "
            f"starting with a letter or digit, at most {MAX_PART} characters",
            param="name") from None
    return name


@dataclass(frozen=True)
class AccountInfo:
    id: int
    name: str
    kind: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    user: str
    name: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.key_id, "user": self.user, "name": self.name, "scope": self.scope,
                "state": self.state, "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat() if self.expires_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
                "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None}


def _account(row: Account) -> AccountInfo:
    return AccountInfo(row.id, row.name, row.kind, row.is_admin, _utc(row.created_at)
                       or row.created_at)


def _key(row: ApiKey, user: str) -> KeyInfo:
    return KeyInfo(row.key_id, user, row.name, row.scope, _utc(row.created_at)
                   or row.created_at, _utc(row.expires_at), _utc(row.revoked_at),
                   _utc(row.last_used_at))


class AccountStore:
    """Accounts and keys over the store's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- accounts ---------------------------------------------------------------------

    def _create(self, session: Session, name: str, kind: str, **values: Any) -> Account:
        check_account_name(name)
        if session.scalar(select(Account.id).where(Account.name == name)) is not None:
            raise Conflict(f"an account named {name!r} already exists; choose another name",
                           param="name")
        account = Account(name=name, kind=kind, **values)
        session.add(account)
        session.flush()
        namespace = session.scalars(select(Namespace).where(Namespace.name == name)).first()
        if namespace is None:
            session.add(Namespace(name=name, kind=kind, owner_id=account.id))
        elif namespace.owner_id is None:  # models published there before accounts existed
            namespace.owner_id, namespace.kind = account.id, kind
        else:
            raise Conflict(f"namespace {name!r} belongs to another account; choose another "
                           "name", param="name")
        return account

    def add_user(self, name: str, *, password: str | None = None,
                 admin: bool = False) -> AccountInfo:
        from gptstore.accounts.passwords import hash_password

        hashed = hash_password(password) if password is not None else None
        with self.db.session(write=True) as session:
            return _account(self._create(session, name, "user", password_hash=hashed,
                                         is_admin=admin))

    def add_org(self, name: str, members: list[tuple[str, str]] = ()) -> AccountInfo:  # type: ignore[assignment]
        with self.db.session(write=True) as session:
            org = self._create(session, name, "org", is_admin=False)
            for user, role in members:
                self._add_member(session, org, user, role)
            return _account(org)

    def add_member(self, org: str, user: str, role: str) -> None:
        with self.db.session(write=True) as session:
            self._add_member(session, self._get(session, org, "org"), user, role)

    def _add_member(self, session: Session, org: Account, user: str, role: str) -> None:
        check_level(role, "role")
        member = self._get(session, user, "user")
        row = session.scalars(select(Membership).where(
            Membership.org_id == org.id, Membership.user_id == member.id)).first()
        if row is None:
            session.add(Membership(org_id=org.id, user_id=member.id, role=role))
        else:
            row.role = role

    def _get(self, session: Session, name: str, kind: str | None = None) -> Account:
        row = session.scalars(select(Account).where(Account.name == name)).first()
        if row is None or (kind is not None and row.kind != kind):
            what = {"user": "user", "org": "organisation"}.get(kind or "", "account")
            raise NotFound(f"no {what} named {name!r}; create it with `gptstore "
                           f"{'orgs' if kind == 'org' else 'users'} add {name}`",
                           param="user" if kind == "user" else "name")
        return row

    def get(self, name: str) -> AccountInfo:
        with self.db.session() as session:
            return _account(self._get(session, name))

    def accounts(self) -> list[AccountInfo]:
        with self.db.session() as session:
            return [_account(a) for a in session.scalars(select(Account).order_by(Account.name))]

    def members(self, org: str) -> list[tuple[str, str]]:
        with self.db.session() as session:
            org_row = self._get(session, org, "org")
            rows = session.execute(select(Account.name, Membership.role).join(
                Membership, Membership.user_id == Account.id).where(
                Membership.org_id == org_row.id).order_by(Account.name)).all()
            return [(name, role) for name, role in rows]

    def has_users(self) -> bool:
        with self.db.session() as session:
            return bool(session.scalar(select(func.count()).select_from(Account).where(
                Account.kind == "user")))

    # -- keys ---------------------------------------------------------------------------

    def create_key(self, user: str, *, scope: str = "write", name: str = "default",
                   expires_at: datetime | None = None) -> tuple[KeyInfo, str]:
        """A new key for `user`: its record and the key itself, which is not stored and
        cannot be shown again."""
        check_level(scope, "scope")
        if not _KEY_NAME_RE.match(name):
            raise InvalidRequest("the key name must be 1 to 64 letters, digits, spaces, '.', "
                                 f"'_' or '-', got {name!r}", param="name")
        if expires_at is not None and _utc(expires_at) <= datetime.now(UTC):  # type: ignore[operator]
            raise InvalidRequest("the expiry is in the past; give a future date or a "
                                 "duration such as 30d", param="expires")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)  # 32 bytes = 256 bits -> 43 characters
        with self.db.session(write=True) as session:
            account = self._get(session, user, "user")
            row = ApiKey(key_id=key_id, user_id=account.id, name=name, scope=scope,
                         secret_hash=_hash_secret(secret), expires_at=expires_at)
            session.add(row)
            session.flush()
            return _key(row, account.name), f"{KEY_PREFIX}{key_id}_{secret}"

    def list_keys(self, user: str | None = None) -> list[KeyInfo]:
        with self.db.session() as session:
            query = select(ApiKey, Account.name).join(Account, Account.id == ApiKey.user_id)
            if user is not None:
                query = query.where(Account.id == self._get(session, user, "user").id)
            rows = session.execute(query.order_by(ApiKey.created_at, ApiKey.id)).all()
            return [_key(row, name) for row, name in rows]

    def revoke_key(self, key_id: str) -> KeyInfo:
        if key_id.startswith(KEY_PREFIX):  # a whole key pasted: keep only its id
            key_id = key_id[len(KEY_PREFIX):].split("_", 1)[0]
        with self.db.session(write=True) as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}; see `gptstore keys list`",
                               param="key")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            owner = session.get(Account, row.user_id)
            assert owner is not None
            return _key(row, owner.name)

    def authenticate(self, key: str) -> Principal:
        """The principal of a valid key; `Unauthenticated` for any other string."""
        match = _KEY_RE.match(key or "")
        if match is None:
            raise Unauthenticated(BAD_KEY)
        key_id, secret = match.groups()
        now = datetime.now(UTC)
        with self.db.session() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
            if row is None or not hmac.compare_digest(row.secret_hash, _hash_secret(secret)):
                raise Unauthenticated(BAD_KEY)
            expires = _utc(row.expires_at)
            if row.revoked_at is not None or (expires is not None and expires <= now):
                raise Unauthenticated(BAD_KEY)
            account = session.get(Account, row.user_id)
            assert account is not None
            return self._principal(session, account, row.scope, key_id)  # type: ignore[arg-type]

    def login(self, name: str, password: str) -> Principal:
        """The principal of a user whose password matches (the web login), with the
        `admin` scope; `Unauthenticated` otherwise, the same for every failure."""
        from gptstore.accounts.passwords import verify_password

        with self.db.session() as session:
            account = session.scalars(select(Account).where(
                Account.name == name, Account.kind == "user")).first()
            stored = account.password_hash if account is not None else None
            if not verify_password(stored, password) or account is None:
                raise Unauthenticated("unknown user or wrong password")
            return self._principal(session, account, "admin", None)

    def principal(self, user: str, scope: Level = "admin") -> Principal:
        """The principal of `user` as if it came with a key of `scope` (CLI, tests)."""
        with self.db.session() as session:
            return self._principal(session, self._get(session, user, "user"), scope, None)

    def _principal(self, session: Session, account: Account, scope: Level,
                   key_id: str | None) -> Principal:
        rows = session.execute(select(Membership.org_id, Account.name, Membership.role).join(
            Account, Account.id == Membership.org_id).where(
            Membership.user_id == account.id)).all()
        orgs = {org_id: (name, role) for org_id, name, role in rows}
        peers: set[int] = set()
        if orgs:
            peers = set(session.scalars(select(Membership.user_id).where(
                Membership.org_id.in_(orgs))).all())
        return Principal("user", name=account.name, account_id=account.id,
                         is_admin=account.is_admin, scope=scope, orgs=orgs,
                         peers=frozenset(peers - {account.id}), key_id=key_id)

    def touch_key(self, key_id: str) -> None:
        """Record that a key was used (the API calls this at most once a minute a key)."""
        with self.db.session(write=True) as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).first()
            if row is not None:
                row.last_used_at = datetime.now(UTC)
