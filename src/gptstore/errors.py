"""One exception tree for the whole store.

Every error a user can cause is a `GptStoreError` subclass whose message names the
problem and the fix. Each also subclasses the natural builtin (LookupError, ValueError,
...) so callers that know nothing of gptstore still catch them sensibly. The HTTP layer
maps these classes to status codes in one place (api/errors.py); the CLI prints the
message and exits non-zero.
"""

from __future__ import annotations


class GptStoreError(Exception):
    """Base of every error gptstore raises on purpose."""

    #: OpenAI-style error type, used by the HTTP error envelope.
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: the request field, CLI option or file the error is about, when there is one
        self.param = param


class InvalidRequest(GptStoreError, ValueError):
    """The caller sent something malformed: a bad name, file, option or value."""

    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """The prompt, or the prompt and the asked-for new tokens, do not fit the model's
    context (OpenAI's code `context_length_exceeded`)."""


class PayloadTooLarge(InvalidRequest):
    """An upload or a request body larger than the deployment allows (HTTP 413)."""


class NotFound(GptStoreError, LookupError):
    """A model, version, blob or file that does not exist."""

    type = "not_found_error"


class Conflict(GptStoreError):
    """The request clashes with the current state (the name is taken, a race was lost)."""

    type = "conflict_error"


class PermissionDenied(GptStoreError, PermissionError):
    """The caller may not do this."""

    type = "permission_error"


class Unauthenticated(GptStoreError, PermissionError):
    """No API key, or one that is unknown, revoked or expired (HTTP 401)."""

    type = "invalid_request_error"


class RateLimited(GptStoreError):
    """The caller sent more than its share (requests per minute, concurrent streams,
    queued jobs): HTTP 429 with `retry_after` seconds."""

    type = "requests"

    def __init__(self, message: str, *, retry_after: float = 1.0,
                 param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class StorageError(GptStoreError, OSError):
    """The disk or database failed underneath us (full disk, unwritable home, ...)."""

    type = "server_error"


class Unavailable(GptStoreError):
    """A resource is temporarily unavailable (no network, server busy); retry later."""

    type = "service_unavailable"
