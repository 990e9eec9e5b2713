"""Accounts for the API tests: users alice, bob, carol, dave; organisation acme with alice
(admin), carol (write) and bob (read); a key of each scope per user; a revoked and an
expired key of alice's."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from gptstore.accounts.store import AccountStore
from gptstore.accounts.tables import ApiKey
from gptstore.catalog.repository import Catalog


@dataclass
class Keys:
    #: user -> scope -> key
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    revoked: str = ""
    expired: str = ""

    def of(self, user: str, scope: str = "admin") -> dict[str, str]:
        """The Authorization header of `user`'s key of `scope`."""
        return {"Authorization": f"Bearer {self.keys[user][scope]}"}


def make_accounts(catalog: Catalog) -> Keys:
    accounts = AccountStore(catalog.db)
    out = Keys()
    for user in ("alice", "bob", "carol", "dave"):
        accounts.add_user(user)
        out.keys[user] = {scope: accounts.create_key(user, scope=scope, name=scope)[1]
                          for scope in ("read", "write", "admin")}
    accounts.add_org("acme", [("alice", "admin"), ("carol", "write"), ("bob", "read")])
    revoked_info, out.revoked = accounts.create_key("alice", scope="admin", name="old")
    accounts.revoke_key(revoked_info.key_id)
    expired_info, out.expired = accounts.create_key(
        "alice", scope="admin", name="short", expires_at=datetime.now(UTC) + timedelta(hours=1))
    with catalog.db.session(write=True) as session:  # its hour has passed
        session.execute(update(ApiKey).where(ApiKey.key_id == expired_info.key_id).values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    return out
