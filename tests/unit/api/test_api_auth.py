"""Authentication and authorisation on every route, in-process.

For each route of the app (read from the app itself, so a new route is covered the day
it is added): no key, a malformed key, a revoked key and an expired key get 401; a
read-only key on a write route gets 403; all in OpenAI's envelope. Then who sees what:
private, organisation and public models across users and roles, files and jobs of
another user, /api/engine, and the local single-user mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from accounts_helpers import Keys, make_accounts
from api_helpers import Publisher
from fastapi.testclient import TestClient

from gptstore.api.app import build_app
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings

CHAT = [{"role": "user", "content": "hi"}]
#: routes anyone may call (liveness, the API's own description)
OPEN_ROUTES = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
#: operations anyone may call: the web login exchanges a password for a key
OPEN_OPERATIONS = {("/api/session", "post")}
#: POST routes that only read (inference): a read key may call them
READ_POSTS = {"/v1/chat/completions", "/v1/completions", "/v1/classifications"}
#: other non-GET operations any key may call: signing out revokes the caller's own key
READ_OPERATIONS = {("/api/session", "DELETE")}
PATH_VALUES = {"namespace": "acme", "name": "m", "number": "1", "file_id": "file-x",
               "job_id": "ftjob-x"}
BODIES: dict[str, Any] = {
    "/v1/chat/completions": {"model": "acme/m", "messages": CHAT},
    "/v1/completions": {"model": "acme/m", "prompt": "hi"},
    "/v1/classifications": {"model": "acme/m", "input": "hi"},
    "/v1/fine_tuning/jobs": {"model": "acme/m", "training_file": "file-x"},
}


@pytest.fixture
def keys(store: Catalog) -> Keys:
    return make_accounts(store)


def routes(client: TestClient) -> list[tuple[str, str, str]]:
    """(method, path with values, what it needs: read / write) of every API route, as
    the app's OpenAPI schema lists them."""
    out = []
    schema = client.app.openapi()  # type: ignore[attr-defined]
    for template, operations in schema["paths"].items():
        if template in OPEN_ROUTES:
            continue
        for method in sorted(operations):
            if (template, method) in OPEN_OPERATIONS:
                continue
            path = template
            for param, value in PATH_VALUES.items():
                path = path.replace("{" + param + "}", value)
            method = method.upper()
            need = "read" if method == "GET" or template in READ_POSTS or \
                (template, method) in READ_OPERATIONS else "write"
            out.append((method, path, need))
    return out


def call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None
         ) -> Any:
    template = next((p for p in BODIES if path == p), None)
    if path == "/v1/files" and method == "POST":
        return client.post(path, headers=headers, data={"purpose": "fine-tune"},
                           files={"file": ("t.jsonl", b'{"text": "a"}\n')})
    return client.request(method, path, headers=headers,
                          json=BODIES[template] if template and method == "POST" else None)


def test_the_route_table_is_what_this_test_knows(client: TestClient, keys: Keys) -> None:
    found = routes(client)
    assert len(found) >= 25
    assert ("POST", "/v1/files", "write") in found
    assert ("GET", "/api/engine", "read") in found
    assert ("POST", "/v1/chat/completions", "read") in found


@pytest.mark.parametrize("credential", ["none", "malformed", "unknown", "revoked", "expired",
                                        "basic"])
def test_every_route_refuses_a_missing_or_bad_key_with_401(client: TestClient, keys: Keys,
                                                           credential: str) -> None:
    headers = {
        "none": None,
        "malformed": {"Authorization": "Bearer not-a-key"},
        "unknown": {"Authorization": "Bearer gsk_000000000000_" + "A" * 43},
        "revoked": {"Authorization": f"Bearer {keys.revoked}"},
        "expired": {"Authorization": f"Bearer {keys.expired}"},
        "basic": {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="},
    }[credential]
    bodies = set()
    for method, path, _ in routes(client):
        response = call(client, method, path, headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        bodies.add(response.text)
    assert len(bodies) == 1  # which check failed is not said: no oracle for keys
    # refused before the engine: a fresh server's first refused request does not wait
    # for torch's imports and the machine's precision measurement
    assert client.app.state.serving is None  # type: ignore[attr-defined]


def test_a_request_for_a_missing_model_starts_no_engine(client: TestClient,
                                                         keys: Keys) -> None:
    for path in READ_POSTS:
        response = call(client, "POST", path, keys.of("alice"))
        assert response.status_code == 404, (path, response.text)
    assert client.app.state.serving is None  # type: ignore[attr-defined]


def test_a_read_key_on_a_write_route_gets_403(client: TestClient, keys: Keys) -> None:
    writes = [(m, p) for m, p, need in routes(client) if need != "read"]
    assert len(writes) >= 6
    for method, path in writes:
        response = call(client, method, path, keys.of("alice", "read"))
        assert response.status_code == 403, (method, path, response.text)
        error = response.json()["error"]
        assert error["type"] == "permission_error" and "--scope " in error["message"]
    # the same key reads (a write key refused a visibility change: below)
    assert client.get("/api/models", headers=keys.of("alice", "read")).status_code == 200


def _visible(client: TestClient, headers: dict[str, str] | None) -> dict[str, set[str]]:
    """The model names visible to a caller through each way of finding them."""
    listed = {m["name"] for m in client.get("/api/models", headers=headers).json()["data"]}
    openai = {m["id"] for m in client.get("/v1/models", headers=headers).json()["data"]}
    one = set()
    for name in ("acme/secret", "acme/team", "acme/open", "alice/own", "alice/shared"):
        if client.get(f"/api/models/{name}", headers=headers).status_code == 200:
            one.add(name)
    return {"listed": listed, "openai": openai, "one": one}


def test_who_sees_which_model(client: TestClient, keys: Keys, publish: Publisher) -> None:
    publish("acme/secret", visibility="private")
    publish("acme/team", visibility="org")
    publish("acme/open")
    publish("alice/own", visibility="private")
    publish("alice/shared", visibility="org")
    expected = {
        # alice: admin of acme, owner of alice/*
        "alice": {"acme/secret", "acme/team", "acme/open", "alice/own", "alice/shared"},
        # carol: writer of acme (private org models too); shares acme with alice
        "carol": {"acme/secret", "acme/team", "acme/open", "alice/shared"},
        # bob: reader of acme: organisation models, not private ones
        "bob": {"acme/team", "acme/open", "alice/shared"},
        # dave: in no organisation: public only
        "dave": {"acme/open"},
    }
    for user, names in expected.items():
        seen = _visible(client, keys.of(user, "read"))
        assert seen == {"listed": names, "openai": names, "one": names}, user


def test_a_hidden_model_answers_exactly_as_a_missing_one(client: TestClient, keys: Keys,
                                                         store: Catalog,
                                                         publish: Publisher) -> None:
    publish("alice/hidden", visibility="private")
    urls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/models/alice/hidden", None),
        ("GET", "/api/models/alice/hidden/versions/1", None),
        ("GET", "/api/models/alice/hidden/card", None),
        ("GET", "/v1/models/alice/hidden", None),
        ("POST", "/v1/chat/completions", {"model": "alice/hidden", "messages": CHAT}),
        ("POST", "/v1/completions", {"model": "alice/hidden", "prompt": "hi"}),
        ("POST", "/v1/classifications", {"model": "alice/hidden", "input": "hi"}),
    ]

    def answers() -> list[tuple[int, str]]:
        out = []
        for method, url, body in urls:
            response = client.request(method, url, json=body, headers=keys.of("bob"))
            out.append((response.status_code, response.text))
        return out

    hidden = answers()
    assert client.get("/api/models/alice/hidden", headers=keys.of("alice")).status_code == 200
    store.delete_model("alice/hidden")
    assert hidden == answers()
    assert {status for status, _ in hidden} == {404}


def test_files_and_jobs_belong_to_their_owner(client: TestClient, keys: Keys) -> None:
    upload = client.post("/v1/files", headers=keys.of("alice", "write"),
                         data={"purpose": "fine-tune"},
                         files={"file": ("t.jsonl", b'{"text": "a"}\n' * 3)})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    alice, bob = keys.of("alice"), keys.of("bob")
    assert [f["id"] for f in client.get("/v1/files", headers=alice).json()["data"]] == [file_id]
    assert client.get("/v1/files", headers=bob).json()["data"] == []
    for url in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content",
                f"/api/files/{file_id}/report"):
        assert client.get(url, headers=bob).status_code == 404, url
        assert client.get(url, headers=alice).status_code == 200, url
    assert client.delete(f"/v1/files/{file_id}", headers=bob).status_code == 404
    # bob cannot train on alice's file either: it answers as a missing one
    job = client.post("/v1/fine_tuning/jobs", headers=keys.of("bob", "write"),
                      json={"model": "acme/m", "training_file": file_id})
    assert job.status_code in (400, 404)
    assert client.get("/v1/fine_tuning/jobs", headers=bob).json()["data"] == []
    deleted = client.delete(f"/v1/files/{file_id}", headers=keys.of("alice", "write"))
    assert deleted.status_code == 200
    from gptstore.accounts.audit import entries

    log = [(e.actor, e.action, e.target, e.request_id)
           for e in entries(client.app.state.catalog.db)]  # type: ignore[attr-defined]
    assert log == [("alice", "upload", file_id, upload.headers["x-request-id"]),
                   ("alice", "delete", file_id, deleted.headers["x-request-id"])]


def test_public_read_lets_anonymous_callers_read_public_models_only(
        settings: Settings, publish_settings: Any = None) -> None:
    settings.public_read = True
    with TestClient(build_app(settings)) as client:
        catalog = client.app.state.catalog  # type: ignore[attr-defined]
        keys = make_accounts(catalog)
        publisher = Publisher(catalog, settings.home.parent / "sources")
        publisher("acme/open")
        publisher("acme/secret", visibility="private")
        names = [m["name"] for m in client.get("/api/models").json()["data"]]
        assert names == ["acme/open"]
        assert client.get("/api/models/acme/secret").status_code == 404
        # no files, jobs or writes without a key
        assert client.get("/v1/files").status_code == 401
        assert client.get("/v1/fine_tuning/jobs").status_code == 401
        assert client.post("/v1/files", data={"purpose": "fine-tune"},
                           files={"file": ("t.jsonl", b"{}\n")}).status_code == 401
        # a bad key is still refused, not taken as anonymous
        assert client.get("/api/models", headers={"Authorization": "Bearer x"}
                          ).status_code == 401
        assert client.get("/api/models/acme/secret", headers=keys.of("alice")
                          ).status_code == 200


def test_engine_stats_show_loaded_models_to_administrators_only(client: TestClient,
                                                                keys: Keys,
                                                                store: Catalog) -> None:
    client.app.state.engine = _FakeEngine()  # type: ignore[attr-defined]
    try:
        body = client.get("/api/engine", headers=keys.of("bob", "read")).json()
        assert body == {"started": True, "running": 1, "waiting": 0, "steps": 7}
        from gptstore.accounts.store import AccountStore

        accounts = AccountStore(store.db)
        accounts.add_user("root", admin=True)
        root_key = accounts.create_key("root", scope="read")[1]
        body = client.get("/api/engine", headers={"Authorization": f"Bearer {root_key}"}
                          ).json()
        assert body["loaded"] == {"sha256:abc": ["/snapshots/alice--secret"]}
        assert body["step_threads"] == {"sha256:abc": 2}
    finally:
        client.app.state.engine = None  # type: ignore[attr-defined]


class _FakeEngine:
    """Only `stats()` and `shutdown()` of the engine: what /api/engine reads (building a
    real engine would load torch for a test of who may see which fields)."""

    def stats(self) -> dict[str, Any]:
        return {"running": 1, "waiting": 0, "steps": 7,
                "loaded": {"sha256:abc": ["/snapshots/alice--secret"]},
                "step_threads": {"sha256:abc": 2}, "base_bytes": 10, "adapter_bytes": 2}

    def shutdown(self) -> None:
        pass


def test_local_mode_needs_no_key_until_a_user_exists(client: TestClient, store: Catalog,
                                                     publish: Publisher) -> None:
    publish("acme/secret", visibility="private")
    # the single local user: sees everything, whatever the client sends as its key
    assert client.get("/api/models/acme/secret").status_code == 200
    assert client.get("/api/models/acme/secret", headers={"Authorization": "Bearer unused"}
                      ).status_code == 200
    make_accounts(store)
    assert client.get("/api/models/acme/secret").status_code == 401


def test_auth_required_applies_on_loopback_without_users(settings: Settings) -> None:
    settings.auth = "required"
    with TestClient(build_app(settings)) as client:
        assert client.get("/api/models").status_code == 401
        assert client.get("/healthz").status_code == 200


def test_a_non_loopback_server_without_users_refuses_to_start(settings: Settings) -> None:
    from gptstore.errors import InvalidRequest

    settings.host = "0.0.0.0"
    with pytest.raises(InvalidRequest, match="gptstore users add"), \
            TestClient(build_app(settings)):
        pass


@pytest.fixture
def limited(settings: Settings) -> Iterator[tuple[TestClient, Keys]]:
    settings.requests_per_minute = 12  # bursts of 3
    with TestClient(build_app(settings)) as client:
        yield client, make_accounts(client.app.state.catalog)  # type: ignore[attr-defined]


def test_requests_per_minute_per_key(limited: tuple[TestClient, Keys],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from gptstore.api import auth

    # a refusal is held until the bucket would refill, at most REFUSAL_HOLD_S
    monkeypatch.setattr(auth, "REFUSAL_HOLD_S", 0.3)
    client, keys = limited
    # the first request verifies the key and is counted by its route; the next ones are
    # counted before routing (api/auth.EarlyRateLimit): each exactly once, either way
    for _ in range(3):
        assert client.get("/v1/models", headers=keys.of("alice")).status_code == 200
    started = time.monotonic()
    refused = client.get("/v1/models", headers=keys.of("alice"))
    assert refused.status_code == 429
    assert time.monotonic() - started >= 0.3  # held (the bucket refills in 5 s)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-request-id"].startswith("req_")
    # refused before the body is read: a flood of requests costs no validation
    junk = client.post("/v1/chat/completions", headers=keys.of("alice"), content=b"{")
    assert junk.status_code == 429
    # with the most refusals already held, the next one is answered at once
    monkeypatch.setattr(auth, "REFUSAL_HOLD_S", 30.0)
    monkeypatch.setattr(auth, "MAX_HELD_REFUSALS", 0)
    assert client.get("/v1/models", headers=keys.of("alice")).status_code == 429
    # another key has its own budget
    assert client.get("/v1/models", headers=keys.of("bob")).status_code == 200


def test_anonymous_reads_count_against_their_address(settings: Settings) -> None:
    settings.requests_per_minute = 12  # bursts of 3
    settings.public_read = True
    with TestClient(build_app(settings)) as client:
        make_accounts(client.app.state.catalog)  # type: ignore[attr-defined]
        for _ in range(3):
            assert client.get("/api/models").status_code == 200
        refused = client.get("/api/models")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_changing_visibility_needs_the_admin_right(client: TestClient, keys: Keys,
                                                   publish: Publisher) -> None:
    publish("acme/tool", visibility="org")
    publish("alice/mine", visibility="private")
    url = "/api/models/acme/tool"
    body = {"visibility": "public"}
    # carol writes to acme but is no admin of it; her key's scope is not the issue
    assert client.patch(url, json=body, headers=keys.of("carol", "admin")).status_code == 403
    assert client.patch(url, json=body, headers=keys.of("alice", "write")).status_code == 403
    # dave cannot even see alice's private model: it does not exist for him
    assert client.patch("/api/models/alice/mine", json=body,
                        headers=keys.of("dave", "admin")).status_code == 404
    changed = client.patch(url, json=body, headers=keys.of("alice", "admin"))
    assert changed.status_code == 200 and changed.json()["visibility"] == "public"
    assert client.get(url, headers=keys.of("dave")).status_code == 200
    bad = client.patch(url, json={"visibility": "everyone"}, headers=keys.of("alice"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "visibility"
    from gptstore.accounts.audit import entries

    log = entries(client.app.state.catalog.db)  # type: ignore[attr-defined]
    assert [(e.actor, e.action, e.target, e.detail) for e in log] == [
        ("alice", "visibility", "acme/tool", {"from": "org", "to": "public"})]


def test_editing_a_listing_needs_the_write_right_and_a_refusal_changes_nothing(
        client: TestClient, keys: Keys, publish: Publisher) -> None:
    publish("acme/tool", visibility="public", description="Old words.")
    url = "/api/models/acme/tool"
    # bob only reads acme; dave is no member; carol writes to acme
    for who in ("bob", "dave"):
        refused = client.patch(url, json={"description": "Mine."}, headers=keys.of(who))
        assert refused.status_code == 403, who
    edited = client.patch(url, json={"description": "Carol's words.", "tags": ["qa"]},
                          headers=keys.of("carol"))
    assert edited.status_code == 200, edited.text
    assert edited.json()["description"] == "Carol's words."
    # carol may not unpublish: the whole request is refused, her new words included
    both = client.patch(url, json={"description": "Hidden now.", "visibility": "private"},
                        headers=keys.of("carol", "admin"))
    assert both.status_code == 403 and both.json()["error"]["param"] == "visibility"
    after = client.get(url, headers=keys.of("dave")).json()
    assert (after["description"], after["visibility"]) == ("Carol's words.", "public")
