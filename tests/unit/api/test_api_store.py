"""`/api/models...`, `/api/engine`, `/healthz` in-process: typed bodies, keyset paging in
every sort order, cursors across inserts, and parameter errors in OpenAI's envelope."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from api_helpers import Publisher
from fastapi.testclient import TestClient

from gptstore import __version__
from gptstore.api.app import build_app
from gptstore.api.store.schemas import ModelPage, ModelPublic, VersionPublic
from gptstore.catalog.repository import Catalog
from gptstore.errors import InvalidRequest
from gptstore.settings import Settings

T0 = datetime(2025, 1, 1, tzinfo=UTC)

#: name -> (downloads, likes, minutes after T0 of its last update), published in this
#: order (ids increase down the list); ties on purpose, so later key columns decide
SEED = {
    "acme/alpha": (5, 1, 3),
    "acme/bravo": (9, 1, 1),
    "beta/charlie": (5, 3, 3),
    "acme/delta": (0, 1, 2),
    "zulu/echo": (9, 0, 0),
}
EXPECTED_ORDER = {
    "name": ["acme/alpha", "acme/bravo", "acme/delta", "beta/charlie", "zulu/echo"],
    "updated": ["beta/charlie", "acme/alpha", "acme/delta", "acme/bravo", "zulu/echo"],
    "downloads": ["acme/bravo", "zulu/echo", "acme/alpha", "beta/charlie", "acme/delta"],
    "likes": ["beta/charlie", "acme/alpha", "acme/bravo", "acme/delta", "zulu/echo"],
}


def _seed(publish: Publisher) -> None:
    for name, (downloads, likes, minutes) in SEED.items():
        publish(name, description=f"model {name}")
        publish.set(name, downloads=downloads, likes=likes,
                    updated_at=T0 + timedelta(minutes=minutes))


def _get(client: TestClient, url: str, status: int = 200, **params: Any) -> Any:
    response = client.get(url, params=params)
    assert response.status_code == status, response.text
    return response.json()


def _pages(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    pages, cursor = [], None
    while True:
        body = _get(client, "/api/models", **params, **({"cursor": cursor} if cursor else {}))
        pages.append(body)
        if not body["has_more"]:
            return pages
        cursor = body["next_cursor"]


def _envelope(message: str, param: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}


def test_a_listing_is_typed(client: TestClient, store: Catalog, publish: Publisher) -> None:
    base = publish("acme/base", {"model.safetensors": b"weights"}, description="A base.",
                   tags=["demo"], license="mit",
                   metrics={"final": {"accuracy": 0.5}, "curves": {"loss": [[1, 2.0]]}})
    publish.set("acme/base", downloads=3, likes=2, updated_at=T0)
    body = _get(client, "/api/models")
    assert ModelPage.model_validate(body).model_dump(mode="json") == body
    created = store.get_model("acme/base").created_at
    assert datetime.fromisoformat(body["data"][0].pop("created_at")) == created
    assert datetime.fromisoformat(body["data"][0].pop("updated_at")) == T0
    assert body == {
        "data": [{
            "name": "acme/base", "namespace": "acme", "task": "causal-lm",
            "description": "A base.", "tags": ["demo"], "license": "mit",
            "visibility": "public", "downloads": 3, "likes": 2, "requests": 0,
            "rating": 0.0, "rating_count": 0,
            "latest": {"number": 1, "kind": "full", "base": None, "size": base.size,
                       "metrics": {"accuracy": 0.5}},
        }],
        "next_cursor": None,
        "has_more": False,
    }


def test_one_model_and_one_version(client: TestClient, publish: Publisher) -> None:
    base = publish("acme/base", {"model.safetensors": b"weights"})
    publish("acme/tuned", {"adapter.safetensors": b"a1"}, kind="adapter", base=base.ref,
            lineage={"seed": 1})
    v2 = publish("acme/tuned", {"adapter.safetensors": b"a2", "extra.json": b"{}"},
                 kind="adapter", base=base.ref, new_model=False, lineage={"seed": 2},
                 metrics={"final": {"accuracy": 0.75}, "train": {"steps": 4}})
    model = _get(client, "/api/models/acme/tuned")
    assert ModelPublic.model_validate(model).model_dump(mode="json") == model
    assert [v["ref"] for v in model["versions"]] == ["acme/tuned@1", "acme/tuned@2"]
    assert model["latest"] == {"number": 2, "kind": "adapter", "base": "acme/base@1",
                               "size": v2.size, "metrics": {"accuracy": 0.75}}
    version = _get(client, "/api/models/acme/tuned/versions/2")
    assert VersionPublic.model_validate(version).model_dump(mode="json") == version
    assert model["versions"][1] == version
    assert datetime.fromisoformat(version.pop("created_at")) == v2.created_at
    assert version == {
        "ref": "acme/tuned@2", "number": 2, "kind": "adapter", "task": "causal-lm",
        "base": "acme/base@1", "manifest_digest": v2.manifest_digest, "size": v2.size,
        "lineage": {"seed": 2},
        "metrics": {"final": {"accuracy": 0.75}, "train": {"steps": 4}},
        "files": [{"path": f.path, "digest": f.digest, "size": f.size} for f in v2.files],
        "evaluations": [],  # suite results: tests/integration/evaluation/test_suites.py
    }
    assert [f["path"] for f in version["files"]] == ["README.md", "adapter.safetensors",
                                                     "extra.json"]
    missing = _get(client, "/api/models/acme/tuned/versions/3", 404)
    assert missing["error"]["message"] == "model acme/tuned has no version 3 (versions: 1, 2)"
    assert missing["error"]["param"] == "model"
    card = client.get("/api/models/acme/tuned/card")
    assert card.status_code == 200
    assert card.headers["content-type"] == "text/plain; charset=utf-8"
    assert card.text.startswith("---\nbase_model: acme/base@1\n")


@pytest.mark.parametrize("sort", ["name", "updated", "downloads", "likes"])
def test_paging_gives_every_model_once_in_order(client: TestClient, publish: Publisher,
                                                sort: str) -> None:
    _seed(publish)
    pages = _pages(client, sort=sort, limit=2)
    expected = EXPECTED_ORDER[sort]
    assert [[m["name"] for m in page["data"]] for page in pages] == [
        expected[0:2], expected[2:4], expected[4:5]]
    assert [page["has_more"] for page in pages] == [True, True, False]
    assert pages[-1]["next_cursor"] is None
    assert all(isinstance(page["next_cursor"], str) for page in pages[:-1])


def test_filters_and_search(client: TestClient, publish: Publisher) -> None:
    publish("acme/sentiment", task="classification", description="Reviews: 100% sure")
    publish("acme/chat_bot", description="Talks.")
    publish("acme/chatxbot", description="Talks too.")

    def names(**params: Any) -> list[str]:
        return [m["name"] for m in _get(client, "/api/models", **params)["data"]]

    assert names(task="classification") == ["acme/sentiment"]
    assert names(task="causal-lm") == ["acme/chat_bot", "acme/chatxbot"]
    assert names(q="CHAT_") == ["acme/chat_bot"]  # `_` matches itself only
    assert names(q="0%") == ["acme/sentiment"]  # and `%`
    assert names(q="talks", task="classification") == []


def test_a_cursor_stays_valid_after_an_insert(client: TestClient, publish: Publisher) -> None:
    _seed(publish)
    first = _get(client, "/api/models", limit=2, sort="downloads")
    assert [m["name"] for m in first["data"]] == ["acme/bravo", "zulu/echo"]
    publish("aaa/popular")
    publish.set("aaa/popular", downloads=100)  # sorts before the cursor: not repeated
    publish("aaa/middle")
    publish.set("aaa/middle", downloads=5)  # after it, first of the 5s by name
    rest = _get(client, "/api/models", limit=10, sort="downloads",
                cursor=first["next_cursor"])
    assert [m["name"] for m in rest["data"]] == ["aaa/middle", "acme/alpha", "beta/charlie",
                                                 "acme/delta"]


def _recode(cursor: str, change: Any) -> str:
    doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    change(doc)
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


NOT_A_CURSOR = ("cursor is not one this store returned: pass `next_cursor` of the previous "
                "page unchanged, or leave cursor out to start at the first page")


def test_bad_cursors_are_400_naming_cursor(client: TestClient, publish: Publisher) -> None:
    _seed(publish)
    cursor = _get(client, "/api/models", limit=2)["next_cursor"]
    tampered = [
        "not a cursor",
        cursor[:-3],  # cut short
        _recode(cursor, lambda d: d["key"].pop()),  # a key part missing
        _recode(cursor, lambda d: d["key"].__setitem__(2, "7")),  # the id as a string
        _recode(cursor, lambda d: d.__setitem__("v", 2)),  # a format we do not know
        base64.urlsafe_b64encode(b"[1, 2]").decode(),  # JSON, not a cursor
        "A" * 5000,  # too long to be ours
    ]
    for bad in tampered:
        assert _get(client, "/api/models", 400, limit=2, cursor=bad) == _envelope(
            NOT_A_CURSOR, "cursor"), bad
    assert _get(client, "/api/models", 400, cursor=cursor, sort="likes") == _envelope(
        "cursor belongs to sort='name', not sort='likes': keep the sort of the first page "
        "while paging, or leave cursor out to start again", "cursor")


@pytest.mark.parametrize(("params", "param"), [
    ({"limit": 0}, "limit"),
    ({"limit": 201}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"sort": "random"}, "sort"),
])
def test_bad_limit_and_sort_are_400_naming_them(client: TestClient, params: dict[str, Any],
                                                param: str) -> None:
    body = _get(client, "/api/models", 400, **params)
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] is None
    assert body["error"]["message"].startswith(f"{param}: ")


def test_limits_at_the_bounds_are_accepted(client: TestClient, publish: Publisher) -> None:
    _seed(publish)
    assert [m["name"] for m in _get(client, "/api/models", limit=1)["data"]] == ["acme/alpha"]
    assert len(_get(client, "/api/models", limit=200)["data"]) == 5
    assert len(_get(client, "/api/models")["data"]) == 5  # default 50


def test_health_and_engine(client: TestClient) -> None:
    assert _get(client, "/healthz") == {"status": "ok", "version": __version__}
    assert _get(client, "/api/engine") == {"started": False}


def test_a_preload_name_the_store_lacks_stops_the_start(settings: Settings) -> None:
    app = build_app(settings.model_copy(update={"preload": "acme/nope"}))
    with pytest.raises(InvalidRequest, match="GPTSTORE_PRELOAD names 'acme/nope'"), \
            TestClient(app):
        pass
