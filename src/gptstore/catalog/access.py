"""Who may read which model: the `Principal` asking, and the one rule that decides.

Every read of the catalog (`Catalog.list_models`, `search_models`, `get_model`,
`resolve`, `exists`, `card`, `get_version`, `export`) takes the principal and filters
its query through `readable_by`; a model the principal may not see is treated exactly
as a missing one (the same `NotFound`, absent from listings), so a name reveals nothing.

The rule is a SQL expression rather than a Python predicate so that a listing filters
in the database, before keyset pagination counts rows: a page is never short because
hidden rows were dropped after the query.

This module knows nothing of HTTP or of how a principal is authenticated: the API builds
one per request (`api/deps.get_principal`), internal callers (training, the CLI on the
local store, the engine's resolver) use `SYSTEM`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, true

from gptstore.catalog.tables import Model

#: the one visibility readable by everyone; others (`private`, and `org` with accounts)
#: are readable only by SYSTEM until accounts give principals users and organisations
PUBLIC = "public"


@dataclass(frozen=True)
class Principal:
    """Who is asking.

    For now only `ANONYMOUS` (an HTTP caller) and `SYSTEM` (the store's own code and the
    CLI on the local store) exist. Accounts will add a `"user"` kind with the fields
    its rules need (a user id, organisation memberships, scopes of an API key); callers
    only pass principals along, so they will not change.
    """

    kind: Literal["anonymous", "system"]

    def __str__(self) -> str:
        return self.kind


ANONYMOUS = Principal("anonymous")
SYSTEM = Principal("system")


def readable_by(principal: Principal) -> ColumnElement[bool]:
    """The condition on a `models` row under which `principal` may read that model:
    public models are readable by everyone, every model by SYSTEM."""
    if principal.kind == "system":
        return true()
    return Model.visibility == PUBLIC
