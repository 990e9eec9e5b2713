"""The web login and API-key management: `/api/session`, `/api/me`, `/api/keys`.

A login is a password exchanged for an API key of the user's own (named
`web session`, admin scope, expiring after `SESSION_HOURS`), which the store front keeps
in the browser and sends as `Authorization: Bearer` like any client. So the browser
and the SDK pass through one authentication path (api/auth.py) and one rate limit, a
session is revoked like a key (signing out revokes it), and no cookie means no CSRF
surface. The alternative, a signed session cookie, would need CSRF tokens on every
write and a second authentication path.

Keys are listed, created and revoked by their own user (an administrator sees and
revokes everyone's); a key is shown once, when created, and only its hash is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import Field

from gptstore.accounts.audit import record
from gptstore.api.auth import LOCAL_OWNER, AdminPrincipal, ReadPrincipal, audit
from gptstore.api.errors import ErrorResponse
from gptstore.api.store.identity import reacting_user
from gptstore.api.store.schemas import StoreBaseModel
from gptstore.catalog.access import Principal
from gptstore.errors import InvalidRequest, NotFound

router = APIRouter(tags=["accounts"])

#: how long a web login lasts
SESSION_HOURS = 12
SESSION_KEY_NAME = "web session"

UNAUTHENTICATED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Unknown user or wrong password."}}


class LoginRequest(StoreBaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class KeyPublic(StoreBaseModel):
    id: str = Field(description="The key's public id (the part after `gsk_`).")
    name: str
    scope: Literal["read", "write", "admin"]
    state: Literal["active", "expired", "revoked"]
    user: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class KeyList(StoreBaseModel):
    data: list[KeyPublic]


class KeyCreate(StoreBaseModel):
    name: str = Field(default="default", min_length=1, max_length=64)
    scope: Literal["read", "write", "admin"] = "write"
    expires_in_days: int | None = Field(default=None, ge=1, le=3650,
                                        description="None: the key does not expire.")


class Membership(StoreBaseModel):
    org: str
    role: Literal["read", "write", "admin"]


class Me(StoreBaseModel):
    """The caller as the store front's pages need to know it: whose files, jobs and
    models are "mine", and what a page may offer. Identity only: every route checks
    its rights again."""

    mode: Literal["local", "keys"] = Field(
        description="`local`: one local user, no login (loopback, no users); `keys`: "
                    "every request needs a key.")
    kind: Literal["anonymous", "system", "user"] = Field(
        description="`system`: the single local user (local mode); `user`: an API key's "
                    "user; `anonymous`: no key, public reads only.")
    user: str | None = Field(description="The signed-in user; None for an anonymous "
                                          "reader of public models.")
    owner: str | None = Field(description="The namespace the caller's uploads, jobs and "
                                          "fine-tunes go into.")
    scope: Literal["read", "write", "admin"]
    is_admin: bool
    orgs: list[Membership]
    namespaces: list[str] = Field(
        description="Namespaces whose models the caller may edit: its own and those of "
                    "organisations where it writes; empty for anonymous callers.")
    can_react: bool = Field(description="Whether the caller may like and rate models.")


def _accounts(request: Request) -> Any:
    return request.app.state.accounts


def _key_public(info: Any) -> dict[str, Any]:
    return {"id": info.key_id, "name": info.name, "scope": info.scope, "state": info.state,
            "user": info.user, "created_at": info.created_at, "expires_at": info.expires_at,
            "revoked_at": info.revoked_at, "last_used_at": info.last_used_at}


def _user_of(principal: Principal) -> str:
    if principal.kind != "user" or principal.name is None:
        raise InvalidRequest("API keys belong to users: create users with `gptstore users "
                             "add NAME`; in local mode (no users) no key is needed",
                             param="authorization")
    return principal.name


@router.post("/session", response_model=KeyCreated, status_code=201,
             responses=UNAUTHENTICATED, summary="Sign in: a password for a session key")
def login(body: LoginRequest, request: Request) -> KeyCreated:
    # failures are rate-limited per user name, so guessing one user's password is slow
    request.app.state.rate_limiter.check(f"login:{body.username}")
    accounts = _accounts(request)
    principal = accounts.login(body.username, body.password)  # the same 401 for any failure
    expires = datetime.now(UTC) + timedelta(hours=SESSION_HOURS)
    info, key = accounts.create_key(principal.name, scope="admin", name=SESSION_KEY_NAME,
                                    expires_at=expires)
    record(request.app.state.catalog.db, principal.name, "key-create", info.key_id,
           {"name": SESSION_KEY_NAME, "scope": "admin", "login": True},
           request_id=getattr(request.state, "request_id", None))
    return KeyCreated(key=key, **_key_public(info))


@router.delete("/session", status_code=204, summary="Sign out: revoke this session's key")
def logout(principal: ReadPrincipal, request: Request) -> None:
    if principal.key_id is not None:
        _accounts(request).revoke_key(principal.key_id)
        request.app.state.auth.forget(principal.key_id)
        audit(request, "key-revoke", principal.key_id, {"logout": True})


@router.get("/me", response_model=Me, summary="Who the caller is")
def me(principal: ReadPrincipal, request: Request) -> Me:
    local = principal.kind == "system" and request.app.state.auth.local_mode()
    orgs = sorted((Membership(org=name, role=role) for name, role in principal.orgs.values()),
                  key=lambda m: m.org)
    owner = LOCAL_OWNER if principal.kind == "system" else principal.owner
    writable = [m.org for m in orgs if m.role in ("write", "admin")]
    return Me(mode="local" if local else "keys", kind=principal.kind,
              user=LOCAL_OWNER if principal.kind == "system" else principal.name,
              owner=owner, scope=principal.scope, is_admin=principal.sees_everything,
              orgs=orgs, namespaces=list(dict.fromkeys([owner, *writable])) if owner else [],
              can_react=reacting_user(principal) is not None)


@router.get("/keys", response_model=KeyList, summary="The caller's API keys")
def list_keys(principal: ReadPrincipal, request: Request) -> KeyList:
    user = None if principal.sees_everything else _user_of(principal)
    keys = _accounts(request).list_keys(user)
    return KeyList(data=[KeyPublic(**_key_public(k)) for k in keys])


@router.post("/keys", response_model=KeyCreated, status_code=201,
             summary="Create an API key for the caller (shown once)")
def create_key(body: KeyCreate, principal: AdminPrincipal, request: Request) -> KeyCreated:
    user = _user_of(principal)
    expires = (datetime.now(UTC) + timedelta(days=body.expires_in_days)
               if body.expires_in_days else None)
    info, key = _accounts(request).create_key(user, scope=body.scope, name=body.name,
                                              expires_at=expires)
    audit(request, "key-create", info.key_id, {"name": body.name, "scope": body.scope})
    return KeyCreated(key=key, **_key_public(info))


@router.delete("/keys/{key_id}", response_model=KeyPublic, responses={
    404: {"model": ErrorResponse, "description": "No such key of the caller's."}},
    summary="Revoke one of the caller's API keys")
def revoke_key(key_id: str, principal: AdminPrincipal, request: Request) -> KeyPublic:
    accounts = _accounts(request)
    if not principal.sees_everything:
        user = _user_of(principal)
        if key_id not in {k.key_id for k in accounts.list_keys(user)}:
            # another user's key answers like a missing one: ids reveal nothing
            raise NotFound(f"you have no API key with id {key_id!r}", param="key_id")
    info = accounts.revoke_key(key_id)
    request.app.state.auth.forget(info.key_id)
    audit(request, "key-revoke", key_id)
    return KeyPublic(**_key_public(info))

