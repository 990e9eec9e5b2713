"""The store front's JSON routes and pages in-process: search with filters and sorts,
the home page's shelves, likes and ratings (one per user), a hostile card rendered
safe, counted downloads, and the page shell at every page path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_helpers import Publisher
from fastapi.testclient import TestClient

from gptstore.api.store.front import CardHtml, ReactionsPublic
from gptstore.api.store.schemas import ModelPage
from gptstore.catalog.repository import Catalog


def _get(client: TestClient, url: str, status: int = 200, **params: Any) -> Any:
    response = client.get(url, params=params)
    assert response.status_code == status, response.text
    return response.json()


def _names(client: TestClient, **params: Any) -> list[str]:
    return [m["name"] for m in _get(client, "/api/search", **params)["data"]]


def test_search_filters_and_sorts(client: TestClient, publish: Publisher) -> None:
    publish("acme/base", description="A base model.", tags=["base"], license="mit")
    publish("acme/sentiment", task="classification", description="Movie reviews.",
            tags=["sentiment"], base="acme/base", metrics={"final": {"accuracy": 0.91}})
    publish("zeta/pirate", description="Talks like a pirate.", tags=["chat", "qa"],
            base="acme/base", license="apache-2.0")
    body = _get(client, "/api/search", q="pirate")
    assert ModelPage.model_validate(body).model_dump(mode="json") == body
    assert [m["name"] for m in body["data"]] == ["zeta/pirate"]
    assert _names(client, q="revi") == ["acme/sentiment"]
    assert sorted(_names(client, base="acme/base")) == ["acme/sentiment", "zeta/pirate"]
    assert _names(client, tag="qa") == ["zeta/pirate"]
    assert _names(client, license="mit") == ["acme/base"]
    assert sorted(_names(client, owner="acme")) == ["acme/base", "acme/sentiment"]
    assert _names(client, task="classification", q="movie") == ["acme/sentiment"]
    assert _names(client, sort="newest") == ["zeta/pirate", "acme/sentiment", "acme/base"]
    first = _get(client, "/api/search", sort="name", limit=2)
    rest = _get(client, "/api/search", sort="name", limit=2, cursor=first["next_cursor"])
    assert [m["name"] for m in first["data"] + rest["data"]] == [
        "acme/base", "acme/sentiment", "zeta/pirate"]
    error = _get(client, "/api/search", 400, sort="name",
                 cursor=first["next_cursor"] + "x")
    assert error["error"]["param"] == "cursor"
    bad = client.get("/api/search", params={"sort": "random"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sort"
    unknown = client.get("/api/search", params={"task": "bogus"})  # not "nothing matches"
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "task"


def test_categories_shelve_models_by_task_and_tag(client: TestClient,
                                                  publish: Publisher) -> None:
    empty = _get(client, "/api/categories")["data"]
    assert [c["key"] for c in empty] == ["chat", "classification", "qa", "translation", "code"]
    assert all(c["models"] == [] for c in empty)
    publish("acme/sentiment", task="classification")
    publish("acme/translator", tags=["translation"])
    shelves = {c["key"]: [m["name"] for m in c["models"]]
               for c in _get(client, "/api/categories")["data"]}
    assert shelves == {"chat": ["acme/translator"], "classification": ["acme/sentiment"],
                       "qa": [], "translation": ["acme/translator"], "code": []}


def test_like_and_rate_once_per_user(client: TestClient, publish: Publisher) -> None:
    publish("acme/m")
    first = _get(client, "/api/models/acme/m/reactions")
    assert ReactionsPublic.model_validate(first).model_dump() == first
    assert (first["likes"], first["liked"], first["my_stars"]) == (0, False, None)
    for _ in range(2):  # liking twice is still one like
        liked = client.put("/api/models/acme/m/like", json={"liked": True}).json()
    assert (liked["likes"], liked["liked"]) == (1, True)
    client.put("/api/models/acme/m/rating", json={"stars": 2})
    rated = client.put("/api/models/acme/m/rating", json={"stars": 4}).json()
    assert (rated["rating"], rated["rating_count"], rated["my_stars"]) == (4.0, 1, 4)
    assert rated["histogram"] == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0}
    listed = _get(client, "/api/search")["data"][0]
    assert (listed["likes"], listed["rating"], listed["rating_count"]) == (1, 4.0, 1)
    bad = client.put("/api/models/acme/m/rating", json={"stars": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stars"
    missing = client.put("/api/models/acme/nope/like", json={"liked": True})
    assert missing.status_code == 404
    unliked = client.put("/api/models/acme/m/like", json={"liked": False}).json()
    assert (unliked["likes"], unliked["liked"]) == (0, False)


def test_a_hostile_card_is_rendered_harmless(client: TestClient, publish: Publisher) -> None:
    publish("acme/evil", description=(
        "<script>alert('card')</script>\n\n<img src=x onerror=alert(1)>\n\n"
        "<a href=\"javascript:alert(2)\">click</a> <iframe src=\"https://e.com\"></iframe>\n\n"
        "**bold** and a [link](https://example.com)"))
    body = _get(client, "/api/models/acme/evil/card.html")
    assert CardHtml.model_validate(body).ref == "acme/evil@1"
    html = body["html"]
    for bad in ("<script", "onerror", "javascript:", "<iframe"):
        assert bad not in html
    assert "<strong>bold</strong>" in html
    assert 'href="https://example.com"' in html and "noopener" in html
    assert body["meta"]["tags"] == ["gptstore"]
    assert client.get("/api/models/acme/evil/card.html", params={"version": 2}
                      ).status_code == 404


def test_a_config_download_counts_once_the_counter_flushes(
        client: TestClient, publish: Publisher, store: Catalog) -> None:
    publish("acme/m", {"config.json": b'{"a": 1}', "model.safetensors": b"weights"})
    response = client.get("/api/models/acme/m/versions/1/files/config.json")
    assert response.status_code == 200 and response.content == b'{"a": 1}'
    assert client.get("/api/models/acme/m/versions/1/files/model.safetensors"
                      ).content == b"weights"  # not counted: one download per config
    missing = client.get("/api/models/acme/m/versions/1/files/nope.bin")
    assert missing.status_code == 404 and "nope.bin" in missing.json()["error"]["message"]
    usage = client.app.state.usage  # type: ignore[attr-defined]
    assert usage.pending() == 1
    assert store.get_model("acme/m").downloads == 0  # batched: not written yet
    usage.flush()
    model = store.get_model("acme/m")
    assert model.downloads == 1
    assert _get(client, "/api/search", sort="trending")["data"][0]["name"] == "acme/m"


def test_pages_are_served_and_unknown_paths_stay_api_errors(client: TestClient) -> None:
    for path in ("/", "/search?q=x", "/models/acme/m", "/models/acme/m@2", "/compare",
                 "/leaderboards", "/leaderboards/sst2", "/finetune", "/jobs/ftjob-1",
                 "/me/models", "/me/files", "/me/jobs"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/app.js"></script>' in response.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for asset in ("api.js", "dom.js", "charts.js", "widgets.js", "model.js",
                  "playground.js", "finetune.js", "mine.js", "leaderboards.js", "style.css",
                  "favicon.svg"):
        assert client.get(f"/static/{asset}").status_code == 200, asset
    unknown = client.get("/no/such/page")
    assert unknown.status_code == 404 and "error" in unknown.json()
    # a browser asking for a page gets the store front, which says there is none
    browsing = client.get("/no/such/page", headers={"accept": "text/html,*/*;q=0.8"})
    assert browsing.status_code == 404 and browsing.text.startswith("<!doctype html>")
    api = client.get("/v1/no/such/route", headers={"accept": "text/html"})
    assert api.status_code == 404 and "error" in api.json()  # the API's is always JSON


def test_a_file_preview_marks_the_tokens_that_carry_the_loss(
        client: TestClient, store: Catalog, tiny_models: dict[str, Any]) -> None:
    from gptstore.catalog.importers import import_path

    import_path(store, tiny_models["llama"], "acme/tiny")
    rows = [{"messages": [{"role": "user", "content": "Say hi"},
                          {"role": "assistant", "content": "hi there"}]}] * 2
    upload = client.post("/v1/files", data={"purpose": "fine-tune"}, files={
        "file": ("chat.jsonl", "".join(json.dumps(r) + "\n" for r in rows))})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    body = _get(client, f"/api/files/{file_id}/preview", base="acme/tiny", limit=1)
    assert (body["base"], body["format"], body["task"]) == ("acme/tiny@1", "chat", "causal-lm")
    [example] = body["examples"]
    assert example["line"] == 1 and example["tokens"] > 0
    assert body["tokens"]["total"] == 2 * example["tokens"] and body["truncated"] == 0
    assert body["estimated_seconds_per_epoch"] == pytest.approx(body["tokens"]["total"] / 300)
    assert "no lora fine-tune of acme/tiny has finished" in body["estimate_basis"]
    targets = "".join(s["text"] for s in example["segments"] if s["loss"])
    prompt = "".join(s["text"] for s in example["segments"] if not s["loss"])
    assert "hi there" in targets and "Say hi" in prompt and "Say hi" not in targets
    missing = client.get(f"/api/files/{file_id}/preview", params={"base": "acme/nope"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    other = client.get("/api/files/file-000000000000000000000000/preview",
                       params={"base": "acme/tiny"})
    assert other.status_code == 404


def test_the_owner_edits_description_and_tags(client: TestClient, publish: Publisher) -> None:
    publish("local/mine", description="Old words.", tags=["old"])
    publish("acme/theirs", description="Not yours.")
    edited = client.patch("/api/models/local/mine",
                          json={"description": "Fresh pirate talk.", "tags": ["Pirate", "qa"]})
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["description"], body["tags"]) == ("Fresh pirate talk.", ["pirate", "qa"])
    assert _names(client, q="pirate") == ["local/mine"]  # reindexed
    assert _names(client, tag="qa") == ["local/mine"]
    assert _names(client, tag="old") == []
    # version 1's card (immutable) still holds the old description, and is still indexed
    assert _names(client, q="old words") == ["local/mine"]
    only_tags = client.patch("/api/models/local/mine", json={"tags": []}).json()
    assert (only_tags["description"], only_tags["tags"]) == ("Fresh pirate talk.", [])
    # in local mode (loopback, no users) the one user administers every namespace;
    # accounts' rights on other namespaces: test_api_auth.py
    theirs = client.patch("/api/models/acme/theirs", json={"description": "Yours now."})
    assert theirs.status_code == 200 and theirs.json()["description"] == "Yours now."
    bad = client.patch("/api/models/local/mine", json={"tags": ["no spaces please"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tags"
    assert client.patch("/api/models/local/nope", json={}).status_code == 404


def test_me_local_then_with_keys(client: TestClient, store: Catalog) -> None:
    from accounts_helpers import make_accounts

    local = _get(client, "/api/me")
    assert local == {"mode": "local", "kind": "system", "user": "local", "scope": "admin",
                     "owner": "local", "is_admin": True, "orgs": [], "namespaces": ["local"],
                     "can_react": True}
    keys = make_accounts(store)  # a store with users requires keys from now on
    assert client.get("/api/me").status_code == 401
    alice = client.get("/api/me", headers=keys.of("alice", "read")).json()
    assert (alice["kind"], alice["user"], alice["scope"]) == ("user", "alice", "read")
    assert alice["namespaces"] == ["alice", "acme"] and alice["can_react"]  # acme's admin
    bob = client.get("/api/me", headers=keys.of("bob")).json()
    assert bob["namespaces"] == ["bob"]  # a reader of acme may not edit its models
