"""Accounts on a real SQLite store (and PostgreSQL when configured): names, namespaces,
keys (format, hash only, scope, expiry, revocation), passwords, principals and what
they may read through the catalog, export included."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gptstore.accounts.store import AccountStore
from gptstore.accounts.tables import ApiKey
from gptstore.catalog.access import ANONYMOUS
from gptstore.catalog.repository import Catalog
from gptstore.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, Unauthenticated


def _publish(catalog: Catalog, tmp_path: Path, name: str, visibility: str) -> None:
    folder = tmp_path / name.replace("/", "--")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    catalog.publish(name, folder, visibility=visibility)


def test_a_key_is_shown_once_and_stored_as_a_hash(catalog: Catalog) -> None:
    accounts = AccountStore(catalog.db)
    accounts.add_user("alice")
    info, key = accounts.create_key("alice", scope="read", name="laptop")
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "gsk" and key_id == info.key_id and len(secret) == 43  # 256 bits
    with catalog.db.session() as session:
        row = session.scalars(select(ApiKey)).one()
        assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in {row.secret_hash, row.key_id, row.name}
    principal = accounts.authenticate(key)
    assert (principal.name, principal.scope, principal.key_id) == ("alice", "read", key_id)
    # every other string is the same 401, whichever part is wrong
    for bad in ("", "gsk_", key[:-1] + ("A" if key[-1] != "A" else "B"),
                f"gsk_{'0' * 12}_{secret}", key + "x", key.upper()):
        with pytest.raises(Unauthenticated):
            accounts.authenticate(bad)


def test_expired_and_revoked_keys_are_refused(catalog: Catalog) -> None:
    accounts = AccountStore(catalog.db)
    accounts.add_user("alice")
    soon = datetime.now(UTC) + timedelta(seconds=1)
    _expiring, key = accounts.create_key("alice", expires_at=soon)
    assert accounts.authenticate(key).name == "alice"
    with catalog.db.session(write=True) as session:
        session.scalars(select(ApiKey)).one().expires_at = datetime.now(UTC) - timedelta(1)
    with pytest.raises(Unauthenticated):
        accounts.authenticate(key)
    assert accounts.list_keys("alice")[0].state == "expired"
    _second, key2 = accounts.create_key("alice", name="second")
    accounts.revoke_key(key2)  # the whole key pasted works too
    with pytest.raises(Unauthenticated):
        accounts.authenticate(key2)
    assert [k.state for k in accounts.list_keys()] == ["expired", "revoked"]
    with pytest.raises(InvalidRequest, match="in the past"):
        accounts.create_key("alice", expires_at=datetime.now(UTC) - timedelta(1))
    with pytest.raises(InvalidRequest):
        accounts.create_key("alice", scope="root")
    with pytest.raises(NotFound):
        accounts.revoke_key("000000000000")


def test_names_and_namespaces(catalog: Catalog, tmp_path: Path) -> None:
    accounts = AccountStore(catalog.db)
    for bad in ("", "../x", "a b", "x" * 97, "-lead", "a/b"):
        with pytest.raises(InvalidRequest):
            accounts.add_user(bad)
    # a namespace used before accounts existed is claimed by the account of its name
    _publish(catalog, tmp_path, "early/model", "private")
    early = accounts.add_user("early")
    assert catalog.namespace_owner("early") == early.id
    with pytest.raises(Conflict):
        accounts.add_org("early")
    # a namespace owned by one account cannot be published into with another
    other = accounts.add_user("other")
    with pytest.raises(PermissionDenied):
        catalog.claim_namespace("early", other.id)
    assert accounts.principal("early").name == "early"


def test_passwords_are_argon2_and_checked_the_same_way_for_unknown_users(
        catalog: Catalog) -> None:
    accounts = AccountStore(catalog.db)
    accounts.add_user("alice", password="correct horse")
    from gptstore.accounts.tables import Account

    with catalog.db.session() as session:
        stored = session.scalars(select(Account.password_hash)).one()
    assert stored is not None and stored.startswith("$argon2id$")
    assert accounts.login("alice", "correct horse").name == "alice"
    for name, password in (("alice", "wrong horse"), ("nobody", "correct horse")):
        with pytest.raises(Unauthenticated, match="unknown user or wrong password"):
            accounts.login(name, password)
    with pytest.raises(InvalidRequest):
        accounts.add_user("bob", password="short")


def test_what_each_principal_reads_through_the_catalog(catalog: Catalog,
                                                       tmp_path: Path) -> None:
    accounts = AccountStore(catalog.db)
    for user in ("alice", "bob", "dave"):
        accounts.add_user(user)
    accounts.add_user("root", admin=True)
    accounts.add_org("acme", [("alice", "read"), ("bob", "write")])
    for name, visibility in (("alice/own", "private"), ("alice/shared", "org"),
                             ("acme/secret", "private"), ("acme/team", "org"),
                             ("acme/open", "public")):
        _publish(catalog, tmp_path, name, visibility)

    def names(principal: object) -> set[str]:
        return {m.name for m in catalog.list_models(principal=principal)}  # type: ignore[arg-type]

    assert names(accounts.principal("alice")) == {"alice/own", "alice/shared", "acme/team",
                                                  "acme/open"}
    assert names(accounts.principal("bob")) == {"alice/shared", "acme/secret", "acme/team",
                                                "acme/open"}
    assert names(accounts.principal("dave")) == names(ANONYMOUS) == {"acme/open"}
    assert len(names(accounts.principal("root"))) == 5
    # export is a read like any other: a model dave may not see does not exist for him
    with pytest.raises(NotFound):
        catalog.export("alice/own", tmp_path / "out", principal=accounts.principal("dave"))
    assert not (tmp_path / "out").exists()
    catalog.export("alice/own", tmp_path / "out", principal=accounts.principal("alice"))
    # visibility changes need the admin right on the namespace
    with pytest.raises(PermissionDenied):
        catalog.set_visibility("acme/team", "public", principal=accounts.principal("bob"))
    with pytest.raises(NotFound):
        catalog.set_visibility("alice/own", "public", principal=accounts.principal("dave"))
    catalog.set_visibility("alice/own", "org", principal=accounts.principal("alice"))
    assert "alice/own" in names(accounts.principal("bob"))
