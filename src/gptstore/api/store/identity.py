"""Who the caller is, as the store front's per-user rows (likes, ratings) name them.

The one place that turns a request's `Principal` into a user key: an account's id for a
caller with an API key (or a web session), the single local user (`deps.LOCAL_OWNER`)
in local mode (loopback, no users), where a like from the browser and one from curl are
the same user's; an anonymous caller may not react, which the routes answer with 401.
"""

from __future__ import annotations

from gptstore.api.deps import LOCAL_OWNER
from gptstore.catalog.access import Principal


def reacting_user(principal: Principal) -> str | None:
    """The user key of likes and ratings made by `principal`; None if it may not react
    (an anonymous reader of a store with accounts)."""
    if principal.kind == "user" and principal.account_id is not None:
        return f"account:{principal.account_id}"
    if principal.kind == "system":  # the local single user (no accounts, loopback)
        return LOCAL_OWNER
    return None
