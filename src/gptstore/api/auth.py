"""Who is asking, for every request: the authentication dependencies of the routes.

Modes (docs/security.md):

- **local**: bound to a loopback address, `GPTSTORE_AUTH=auto` and no users in the
  store. Every request is the single local admin (`SYSTEM`, owner `local`), whatever
  it sends, so `make run` and the `openai` client with any `api_key` just work.
- **keys**: otherwise. `Authorization: Bearer <key>` on every request; without one, 401,
  except reads of public models when `GPTSTORE_PUBLIC_READ=true` (as `ANONYMOUS`).

A route states what it needs (`ReadPrincipal`, `WritePrincipal`, `AdminPrincipal`): a
key whose scope is weaker gets 403. Every authenticated request also passes the
per-key rate limit (`limits.RateLimiter`). The principal is kept on `request.state`, so
the rate limit counts a request once however many dependencies ask.

`EarlyRateLimit` counts it sooner where it can: a request whose key was verified a
moment ago (the key cache) is counted before routing, and refused there when its bucket
is empty. A flooding client's refusals then cost the server the HTTP parsing and
nothing else: no body validation, no worker thread, no dependency (measured: 1.5 ms of
server CPU per refusal through the route, 0.5 ms here). And the refusal is answered
when the bucket would next hold a token (`Retry-After`'s moment, at most
`REFUSAL_HOLD_S`), as nginx's `limit_req` delays excess requests: a client that
retries the moment it is refused then sends at about its allowed rate instead of as
fast as the refusals come back, and costs the process running the engine that much
less. At most `MAX_HELD_REFUSALS` wait at once, so holding them costs no more than a
bounded number of idle coroutines; beyond that they are answered at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Annotated, Any

from fastapi import Depends, Request

from gptstore.accounts.store import BAD_KEY, AccountStore
from gptstore.catalog.access import ANONYMOUS, SYSTEM, Level, Principal, at_least
from gptstore.errors import PermissionDenied, RateLimited, Unauthenticated
from gptstore.settings import Settings

#: the owner of everything made by the single local user (no accounts)
LOCAL_OWNER = "local"
#: a key's `last_used_at` is written at most this often (one write per request is waste)
_TOUCH_EVERY_S = 60.0
#: a verified key is trusted this long without asking the database again: a client
#: sending a hundred requests a second (most of them refused by its rate limit) then
#: costs one query every two seconds instead of a hundred a second, in the process that
#: also runs the engine. A key revoked through this server is forgotten at once; one
#: revoked by the CLI, or expiring, stops working within this time.
KEY_CACHE_S = 2.0
#: verified keys remembered at most (the cache is cleared when it fills)
_KEY_CACHE_MAX = 10_000
#: a request refused for its rate is answered when its bucket would next hold a token,
#: at most this many seconds later (see `EarlyRateLimit`)
REFUSAL_HOLD_S = 1.0
#: refusals held at once at most; beyond, they are answered at once
MAX_HELD_REFUSALS = 256


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine (0.0.0.0 does not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings, has_users: bool) -> str | None:
    """Why the server must not start with these settings, or None."""
    if not is_loopback(settings.host) and not has_users:
        return (f"refusing to serve on {settings.host}, a non-loopback address, with no "
                "users: anyone who can reach the port would own the store. Create a user "
                "and a key first: `gptstore users add NAME` then `gptstore keys create "
                "NAME`, or bind to 127.0.0.1")
    return None


class Authenticator:
    """Per-app state of authentication: the mode, the account store, key touches."""

    def __init__(self, settings: Settings, accounts: AccountStore) -> None:
        self.settings = settings
        self.accounts = accounts
        self._users_seen = False
        self._touched: dict[str, float] = {}
        #: key -> (its principal, when to ask the database again)
        self._verified: dict[str, tuple[Principal, float]] = {}

    def local_mode(self) -> bool:
        if self.settings.auth == "required" or not is_loopback(self.settings.host):
            return False
        if not self._users_seen:
            # one small query a request, in local mode only; users are never deleted, so
            # once one is seen (created by the CLI meanwhile), keys are required for good
            self._users_seen = self.accounts.has_users()
        return not self._users_seen

    def principal(self, authorization: str | None, need: Level) -> Principal:
        if self.local_mode():
            return SYSTEM
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(BAD_KEY)
            principal = self._verify(token.strip())
            self._touch(principal.key_id)
            return principal
        if need == "read" and self.settings.public_read:
            return ANONYMOUS
        raise Unauthenticated(BAD_KEY)

    def _verify(self, token: str) -> Principal:
        cached = self.cached(token)
        if cached is not None:
            return cached
        now = time.monotonic()
        principal = self.accounts.authenticate(token)  # Unauthenticated: never cached
        if len(self._verified) >= _KEY_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (principal, now + KEY_CACHE_S)
        return principal

    def cached(self, token: str) -> Principal | None:
        """The principal of `token` if it was verified within `KEY_CACHE_S`, else None
        (no database query)."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        return None

    def forget(self, key_id: str) -> None:
        """Stop trusting the key `key_id` at once (it was revoked through this server)."""
        for token in [t for t, (p, _) in self._verified.items() if p.key_id == key_id]:
            self._verified.pop(token, None)

    def _touch(self, key_id: str | None) -> None:
        if key_id is None:
            return
        now = time.monotonic()
        if now - self._touched.get(key_id, -_TOUCH_EVERY_S) >= _TOUCH_EVERY_S:
            self._touched[key_id] = now
            self.accounts.touch_key(key_id)


def _authenticate(request: Request, need: Level) -> Principal:
    state = request.state
    principal: Principal | None = getattr(state, "principal", None)
    if principal is None:
        app_state = request.app.state
        principal = app_state.auth.principal(request.headers.get("authorization"), need)
        state.principal = principal
        # counted already before routing (EarlyRateLimit) only for that key: a request
        # without one (anonymous, counted by address) is always counted here
        counted = getattr(state, "rate_counted", None)
        if counted is None or counted != principal.key_id:
            app_state.rate_limiter.check(rate_key(request, principal))
    if not at_least(principal.scope, need):
        raise PermissionDenied(f"this API key has the {principal.scope} scope; this request "
                               f"needs {need}: create a key with `gptstore keys create USER "
                               f"--scope {need}`")
    return principal


class EarlyRateLimit:
    """ASGI middleware: the rate limit of a request whose key is in the key cache,
    counted before routing (see the module docstring). Requests it cannot place (no
    key, a key not verified lately, the local mode) pass on to be counted by the route."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.held = 0  # refusals being held now

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            principal = self._cached_principal(scope)
            if principal is not None and principal.key_id is not None:
                try:
                    scope["app"].state.rate_limiter.check(f"key:{principal.key_id}")
                except RateLimited as exc:
                    await self._refuse(exc, scope, receive, send)
                    return
                # the route's dependency does not count it again (for this key only)
                scope.setdefault("state", {})["rate_counted"] = principal.key_id
        await self.app(scope, receive, send)

    async def _refuse(self, exc: RateLimited, scope: dict[str, Any], receive: Any,
                      send: Any) -> None:
        from gptstore.api.errors import error_response

        wait = min(float(exc.retry_after or 0.0), REFUSAL_HOLD_S)
        if wait > 0 and self.held < MAX_HELD_REFUSALS:
            self.held += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self.held -= 1
        await error_response(exc)(scope, receive, send)

    @staticmethod
    def _cached_principal(scope: dict[str, Any]) -> Principal | None:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return None
                auth: Authenticator = scope["app"].state.auth
                return auth.cached(token.strip())
        return None


def rate_key(request: Request, principal: Principal) -> str | None:
    """Whose budget a request counts against: its key, else its address; SYSTEM (the
    local single user) has none."""
    if principal.kind == "system":
        return None
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return f"addr:{request.client.host if request.client else '?'}"


def read_principal(request: Request) -> Principal:
    return _authenticate(request, "read")


def write_principal(request: Request) -> Principal:
    return _authenticate(request, "write")


def admin_principal(request: Request) -> Principal:
    return _authenticate(request, "admin")


def owner_of(principal: Principal) -> str:
    """The namespace owning what the caller creates (files, jobs, fine-tunes) and whose
    files and jobs it sees. Anonymous callers own nothing and see no files or jobs."""
    if principal.kind == "anonymous":
        raise Unauthenticated(BAD_KEY)
    return principal.owner or LOCAL_OWNER


def read_owner(request: Request) -> str:
    return owner_of(read_principal(request))


def write_owner(request: Request) -> str:
    return owner_of(write_principal(request))


def audit(request: Request, action: str, target: str,
          detail: dict[str, object] | None = None) -> None:
    """Record in the audit log that the request's principal did `action` on `target`,
    with the request id (blocking: call from a worker thread or a sync route)."""
    from gptstore.accounts.audit import record

    principal = getattr(request.state, "principal", None)
    actor = str(principal) if principal is not None and principal.kind == "user" else \
        LOCAL_OWNER if principal is not None and principal.kind == "system" else "anonymous"
    record(request.app.state.catalog.db, actor, action, target, detail,
           request_id=getattr(request.state, "request_id", None))


ReadPrincipal = Annotated[Principal, Depends(read_principal)]
WritePrincipal = Annotated[Principal, Depends(write_principal)]
AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
ReadOwner = Annotated[str, Depends(read_owner)]
WriteOwner = Annotated[str, Depends(write_owner)]
