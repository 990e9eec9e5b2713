"""Who may read which model: the `Principal` asking, and the one rule that decides.

Every read of the catalog (`Catalog.list_models`, `search_models`, `get_model`,
`resolve`, `exists`, `card`, `get_version`, `export`) takes the principal and filters
its query through `readable_by`; a model the principal may not see is treated exactly
as a missing one (the same `NotFound`, absent from listings), so a name reveals nothing.

The rule is a SQL expression rather than a Python predicate so that a listing filters
in the database, before keyset pagination counts rows: a page is never short because
hidden rows were dropped after the query.

A model's owner is the account (user or organisation) that owns its namespace
(`namespaces.owner_id`). Visibility:

- `public`: everyone (anonymous callers too, where the deployment allows them);
- `org`: the owner; for an organisation's model its members (any role); for a user's
  model the members of the organisations the user belongs to;
- `private`: the owner; for an organisation's model its members with the `write` or
  `admin` role.

Store administrators and `SYSTEM` (the store's own code, the CLI on the local store, the
single local user of a server on loopback without accounts) read everything.

This module knows nothing of HTTP or of how a principal is authenticated: the API builds
one per request (`api/auth.py`), internal callers use `SYSTEM`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import ColumnElement, and_, false, or_, select, true

from gptstore.catalog.tables import Model, Namespace

PUBLIC = "public"
ORG = "org"
PRIVATE = "private"
VISIBILITIES = (PRIVATE, ORG, PUBLIC)

#: roles of organisation members and scopes of API keys, weakest first; each includes
#: the ones before it
LEVELS = ("read", "write", "admin")
Level = Literal["read", "write", "admin"]


def at_least(have: str, need: str) -> bool:
    return LEVELS.index(have) >= LEVELS.index(need)


@dataclass(frozen=True)
class Principal:
    """Who is asking.

    `ANONYMOUS` (an HTTP caller without a key, where public reads are allowed), `SYSTEM`
    (the store's own code, the CLI, the local single user), or a `"user"` authenticated
    by an API key: its account, the key's scope, its organisation roles and the users
    it shares an organisation with (for `org` visibility of users' models).
    """

    kind: Literal["anonymous", "system", "user"]
    name: str | None = None
    account_id: int | None = None
    is_admin: bool = False
    #: the scope of the API key this request came with
    scope: Level = "admin"
    #: organisation account id -> (organisation name, role)
    orgs: dict[int, tuple[str, str]] = field(default_factory=dict, hash=False)
    #: account ids of users who share an organisation with this one
    peers: frozenset[int] = frozenset()
    #: the API key's id (rate limits, audit), None for SYSTEM / ANONYMOUS
    key_id: str | None = None

    def __str__(self) -> str:
        return self.name if self.kind == "user" and self.name else self.kind

    @property
    def sees_everything(self) -> bool:
        return self.kind == "system" or (self.kind == "user" and self.is_admin)

    @property
    def owner(self) -> str | None:
        """The namespace what this principal creates goes into (files, jobs, models)."""
        return self.name if self.kind == "user" else None

    def role_in(self, org_id: int) -> str | None:
        entry = self.orgs.get(org_id)
        return entry[1] if entry else None

    def may_write_namespace(self, owner_id: int | None, *, need: Level = "write") -> bool:
        """Whether this principal may create in (`write`) or change / delete from
        (`admin`) a namespace owned by account `owner_id`."""
        if self.sees_everything:
            return True
        if self.kind != "user" or owner_id is None:
            return False
        if owner_id == self.account_id:
            return True
        role = self.role_in(owner_id)
        return role is not None and at_least(role, need)


ANONYMOUS = Principal("anonymous", scope="read")
SYSTEM = Principal("system")


def _owned_by(ids: set[int]) -> ColumnElement[bool]:
    if not ids:
        return false()
    return Model.namespace_id.in_(select(Namespace.id).where(Namespace.owner_id.in_(ids)))


def readable_by(principal: Principal) -> ColumnElement[bool]:
    """The condition on a `models` row under which `principal` may read that model (the
    table in the module docstring)."""
    if principal.sees_everything:
        return true()
    if principal.kind != "user" or principal.account_id is None:
        return Model.visibility == PUBLIC
    member_of = set(principal.orgs)
    writer_of = {org for org, (_, role) in principal.orgs.items() if at_least(role, "write")}
    return or_(
        Model.visibility == PUBLIC,
        _owned_by({principal.account_id} | writer_of),
        and_(Model.visibility == ORG, _owned_by(member_of | set(principal.peers))),
    )
