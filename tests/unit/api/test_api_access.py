"""What an HTTP caller may read: a model it may not see answers exactly as a missing one
on every route (store, OpenAI models and inference) and is absent from listings. The
caller is dave, a user in no organisation (accounts_helpers)."""

from __future__ import annotations

from typing import Any

import pytest
from accounts_helpers import Keys, make_accounts
from api_helpers import Publisher
from fastapi.testclient import TestClient

from gptstore.api.deps import get_principal
from gptstore.catalog.access import SYSTEM
from gptstore.catalog.repository import Catalog

CHAT = [{"role": "user", "content": "hi"}]

#: every route that reads one model, as (method, url, json body)
ONE_MODEL_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/models/acme/hidden", None),
    ("GET", "/api/models/acme/hidden/versions/1", None),
    ("GET", "/api/models/acme/hidden/card", None),
    ("GET", "/v1/models/acme/hidden", None),
    ("POST", "/v1/chat/completions", {"model": "acme/hidden", "messages": CHAT}),
    ("POST", "/v1/completions", {"model": "acme/hidden", "prompt": "hi"}),
    ("POST", "/v1/classifications", {"model": "acme/hidden", "input": "hi"}),
]


@pytest.fixture
def keys(store: Catalog) -> Keys:
    return make_accounts(store)


def _answers(client: TestClient, keys: Keys) -> list[tuple[int, Any]]:
    out = []
    for method, url, body in ONE_MODEL_ROUTES:
        response = client.request(method, url, json=body, headers=keys.of("dave"))
        out.append((response.status_code, response.json()))
    return out


def test_a_private_model_answers_as_a_missing_one(client: TestClient, store: Catalog,
                                                  publish: Publisher, keys: Keys) -> None:
    publish("acme/open")
    publish("acme/hidden")
    publish.set("acme/hidden", visibility="private")
    hidden = _answers(client, keys)
    store.delete_model("acme/hidden")
    missing = _answers(client, keys)
    assert hidden == missing
    not_found = {"error": {
        "message": "model acme/hidden is not in the store; see `gptstore models list` or "
                   "pull / import it first",
        "type": "not_found_error", "param": "model", "code": "model_not_found"}}
    assert missing == [(404, not_found)] * len(ONE_MODEL_ROUTES)


def test_listings_leave_private_models_out(client: TestClient, publish: Publisher,
                                           keys: Keys) -> None:
    for name in ("acme/a", "acme/b", "acme/c", "acme/d", "acme/e"):
        publish(name)
    publish.set("acme/b", visibility="private")
    publish.set("acme/d", visibility="org")
    dave = keys.of("dave")
    first = client.get("/api/models", params={"limit": 2}, headers=dave).json()
    second = client.get("/api/models", params={"limit": 2, "cursor": first["next_cursor"]},
                        headers=dave).json()
    assert [m["name"] for m in first["data"]] == ["acme/a", "acme/c"]
    assert [m["name"] for m in second["data"]] == ["acme/e"]
    assert second["has_more"] is False
    openai_ids = [m["id"] for m in client.get("/v1/models", headers=dave).json()["data"]]
    assert openai_ids == ["acme/a", "acme/c", "acme/e"]


def test_routes_ask_get_principal(client: TestClient, store: Catalog,
                                  publish: Publisher, keys: Keys) -> None:
    """Every catalog route takes the answer of get_principal."""
    publish("acme/hidden")
    publish.set("acme/hidden", visibility="private")
    client.app.dependency_overrides[get_principal] = lambda: SYSTEM  # type: ignore[attr-defined]
    try:
        listed = client.get("/api/models").json()["data"]
        assert [(m["name"], m["visibility"]) for m in listed] == [("acme/hidden", "private")]
        assert client.get("/api/models/acme/hidden").status_code == 200
        assert client.get("/api/models/acme/hidden/versions/1").json()["ref"] == (
            "acme/hidden@1")
        assert client.get("/api/models/acme/hidden/card").text.startswith("---\n")
        created = int(store.get_model("acme/hidden").created_at.timestamp())
        assert client.get("/v1/models/acme/hidden").json() == {
            "id": "acme/hidden", "object": "model", "owned_by": "acme", "created": created}
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert client.get("/api/models/acme/hidden", headers=keys.of("dave")).status_code == 404
