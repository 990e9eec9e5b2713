"""The web login and key management over HTTP: a password exchanged for a session key,
signing out, `/api/me`, and each user listing, creating and revoking only their own keys."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from gptstore.accounts.audit import entries
from gptstore.accounts.store import AccountStore
from gptstore.catalog.repository import Catalog


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def login(client: TestClient, user: str, password: str) -> Any:
    return client.post("/api/session", json={"username": user, "password": password})


def test_local_mode_needs_no_login(client: TestClient) -> None:
    me = client.get("/api/me").json()
    assert (me["mode"], me["user"], me["owner"], me["is_admin"]) == ("local", "local",
                                                                     "local", True)
    assert client.get("/api/keys").json() == {"data": []}
    refused = client.post("/api/keys", json={"name": "ci"})
    assert refused.status_code == 400 and "gptstore users add" in refused.json()["error"][
        "message"]


def test_login_me_keys_and_logout(client: TestClient, store: Catalog) -> None:
    accounts = AccountStore(store.db)
    accounts.add_user("alice", password="correct horse battery")
    accounts.add_user("bob", password="bob's own secret")
    accounts.add_org("acme", [("alice", "write")])

    # wrong password and unknown user: the same 401, so names are not revealed
    wrong, unknown = login(client, "alice", "guess"), login(client, "zed", "guess")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert client.get("/api/me").status_code == 401  # keys mode now: users exist

    session = login(client, "alice", "correct horse battery")
    assert session.status_code == 201, session.text
    body = session.json()
    assert (body["name"], body["scope"], body["state"]) == ("web session", "admin", "active")
    assert body["expires_at"] is not None
    alice = bearer(body["key"])
    me = client.get("/api/me", headers=alice).json()
    assert (me["mode"], me["user"], me["owner"]) == ("keys", "alice", "alice")
    assert me["orgs"] == [{"org": "acme", "role": "write"}]

    # a read key made in the UI reads but may not write; shown once, listed without it
    made = client.post("/api/keys", json={"name": "notebook", "scope": "read",
                                          "expires_in_days": 30}, headers=alice)
    assert made.status_code == 201, made.text
    read_key = made.json()["key"]
    assert client.get("/v1/models", headers=bearer(read_key)).status_code == 200
    assert client.post("/api/keys", json={"name": "x"},
                       headers=bearer(read_key)).status_code == 403
    listed = client.get("/api/keys", headers=alice).json()["data"]
    assert [k["name"] for k in listed] == ["web session", "notebook"]
    assert all("key" not in k for k in listed)

    # bob neither sees nor revokes alice's keys: another's key id answers 404
    bob = bearer(login(client, "bob", "bob's own secret").json()["key"])
    assert [k["user"] for k in client.get("/api/keys", headers=bob).json()["data"]] == ["bob"]
    notebook_id = made.json()["id"]
    assert client.delete(f"/api/keys/{notebook_id}", headers=bob).status_code == 404
    assert client.get("/v1/models", headers=bearer(read_key)).status_code == 200
    revoked = client.delete(f"/api/keys/{notebook_id}", headers=alice)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert client.get("/v1/models", headers=bearer(read_key)).status_code == 401

    # signing out revokes the session's key
    assert client.delete("/api/session", headers=alice).status_code == 204
    assert client.get("/api/me", headers=alice).status_code == 401
    actions = [(e.actor, e.action) for e in entries(store.db)]
    assert ("alice", "key-create") in actions and ("alice", "key-revoke") in actions


def test_bad_key_requests_name_the_field(client: TestClient, store: Catalog) -> None:
    accounts = AccountStore(store.db)
    accounts.add_user("alice", password="correct horse battery")
    alice = bearer(login(client, "alice", "correct horse battery").json()["key"])
    for body, param in (({"scope": "root"}, "scope"), ({"expires_in_days": 0}, "expires_in_days"),
                        ({"name": "bad/name"}, "name")):
        answer = client.post("/api/keys", json=body, headers=alice)
        assert answer.status_code == 400, (body, answer.text)
        assert param in (answer.json()["error"]["param"] or answer.json()["error"]["message"])


def test_a_key_revoked_through_the_server_stops_at_once(client: TestClient,
                                                         store: Catalog) -> None:
    # verified keys are trusted for a moment without a query (api/auth.KEY_CACHE_S);
    # revoking through the API forgets the key in that cache too
    accounts = AccountStore(store.db)
    accounts.add_user("alice", password="correct horse battery")
    alice = bearer(login(client, "alice", "correct horse battery").json()["key"])
    made = client.post("/api/keys", json={"name": "ci"}, headers=alice).json()
    assert client.get("/v1/models", headers=bearer(made["key"])).status_code == 200
    assert client.delete(f"/api/keys/{made['id']}", headers=alice).status_code == 200
    assert client.get("/v1/models", headers=bearer(made["key"])).status_code == 401
