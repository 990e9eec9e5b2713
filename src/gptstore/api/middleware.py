"""The outermost layer of every request (plain ASGI, so streams pass through untouched):

- a request id: the caller's `X-Request-Id` if it is a short plain token, else a new
  one; every response carries it in `x-request-id`;
- one log line on the server for every error response (status >= 400) and a traceback
  for an unexpected exception, with that id; the client gets OpenAI's envelope with a
  500 and the id, never a stack trace;
- the body limit: a request body over `GPTSTORE_MAX_REQUEST_BYTES` (outside file
  uploads, which have their own limit) is refused with 413 as soon as its
  `Content-Length` says so, or as soon as that many bytes arrived when it has none.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from gptstore.api.errors import envelope

log = logging.getLogger("gptstore.api")

Scope = dict[str, Any]
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: routes that stream large bodies under their own limit (GPTSTORE_MAX_UPLOAD_BYTES)
UPLOAD_PATHS = ("/v1/files",)


class _BodyTooLarge(BaseException):
    """Raised from `receive`: a BaseException, so that no `except Exception` between here
    and the route (FastAPI's body parsing has one) turns it into another error."""


def _json(status: int, body: dict[str, object], request_id: str,
          extra: list[tuple[bytes, bytes]] = ()) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[assignment]
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode()),
               (b"x-request-id", request_id.encode()), *extra]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": data})


class RequestGuard:
    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _ID_RE.match(given) else f"req_{secrets.token_hex(12)}"
        scope.setdefault("state", {})["request_id"] = request_id
        method, path = scope.get("method", "?"), scope.get("path", "?")
        started = time.monotonic()
        status_sent: list[int] = []

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_sent.append(message["status"])
                # nosniff: a card served as text/plain is never run as HTML by a browser
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode()),
                                      (b"x-content-type-options", b"nosniff")]
            await send(message)

        limited = not path.startswith(UPLOAD_PATHS)
        length = headers.get(b"content-length", b"")
        if limited and length.isdigit() and int(length) > self.max_body:
            await self._refuse_large(send, request_id, method, path)
            return
        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if limited and message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted_receive, send_with_id)
        except _BodyTooLarge:
            if not status_sent:
                await self._refuse_large(send, request_id, method, path)
            return
        except Exception:
            log.exception("request %s %s %s failed", request_id, method, path)
            if not status_sent:
                for message in _json(500, envelope(
                        f"internal error; quote request id {request_id} when reporting it",
                        "server_error"), request_id):
                    await send(message)
            return
        if status_sent and status_sent[0] >= 400:
            log.warning("request %s %s %s -> %d in %.0f ms", request_id, method, path,
                        status_sent[0], (time.monotonic() - started) * 1000)

    async def _refuse_large(self, send: Any, request_id: str, method: str, path: str) -> None:
        log.warning("request %s %s %s -> 413 (body over %d bytes)", request_id, method, path,
                    self.max_body)
        for message in _json(413, envelope(
                f"the request body is over {self.max_body} bytes "
                "(GPTSTORE_MAX_REQUEST_BYTES); send less", "invalid_request_error"),
                request_id, [(b"connection", b"close")]):
            await send(message)
