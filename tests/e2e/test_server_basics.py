"""`gptstore serve` as a real process: health, the store listing and /v1/models through
the official openai client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer

pytestmark = pytest.mark.e2e


def test_health_and_listings(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    home = tmp_path / "home"
    catalog = Catalog(Settings(home=home))
    import_path(catalog, tiny_models["gpt2"], "acme/tiny-gpt2")
    catalog.close()
    with RemoteServer(home) as server:
        assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
        listing = httpx.get(server.url + "/api/models").json()
        assert [m["name"] for m in listing["data"]] == ["acme/tiny-gpt2"]
        assert (listing["has_more"], listing["next_cursor"]) == (False, None)
        assert listing["data"][0]["latest"]["number"] == 1
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list()] == ["acme/tiny-gpt2"]
        assert client.models.retrieve("acme/tiny-gpt2").owned_by == "acme"
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("acme/missing")
        assert info.value.body["message"].startswith("model acme/missing is not in the store")
        card = httpx.get(server.url + "/api/models/acme/tiny-gpt2/card").text
        assert card.startswith("---\n")
