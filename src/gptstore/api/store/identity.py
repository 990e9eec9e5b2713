"""Who the caller is, as the store front's per-user rows (likes, ratings) name them.

The one place that turns a request's `Principal` into a user key. Until accounts exist
every HTTP caller is the single local user (`deps.LOCAL_OWNER`), so a like from the
browser and one from curl are the same user's. Accounts plug in here: a principal that
carries a user id returns it, and one that may not react (an anonymous caller on a
store with accounts) returns None, which the routes answer with 401.
"""

from __future__ import annotations

from gptstore.api.deps import LOCAL_OWNER
from gptstore.catalog.access import Principal


def reacting_user(principal: Principal) -> str | None:
    """The user key of likes and ratings made by `principal`; None if it may not react."""
    user_id = getattr(principal, "user_id", None)  # accounts' principals carry one
    if user_id is not None:
        return str(user_id)
    return LOCAL_OWNER
