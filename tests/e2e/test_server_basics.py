"""`gptstore serve` as a real process: health, the store listing and /v1/models through
the official openai client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def test_preloaded_models_load_as_the_server_starts(tmp_path: Path,
                                                     tiny_models: dict[str, Path]) -> None:
    """`GPTSTORE_PRELOAD`: the model is loaded before any request asks for it, and
    serves as usual; a name the store lacks stops the start, naming the variable."""
    home = tmp_path / "home"
    catalog = Catalog(Settings(home=home))
    import_path(catalog, tiny_models["llama"], "acme/tiny")
    import_path(catalog, tiny_models["gpt2"], "acme/tiny-gpt2")
    catalog.close()
    with RemoteServer(home, env={"GPTSTORE_PRELOAD": "acme/tiny"}) as server:
        deadline = time.monotonic() + 120
        engine: dict[str, object] = {}
        while time.monotonic() < deadline and not engine.get("loaded"):
            time.sleep(0.2)
            engine = httpx.get(server.url + "/api/engine").json()
        assert engine["started"] and len(engine["loaded"]) == 1  # type: ignore[arg-type]
        assert engine["steps"] == 0  # loaded without a request
        # the threads its steps run on, measured as it loaded (threads.py checks them on)
        assert engine["step_threads"].keys() == engine["loaded"].keys()  # type: ignore[attr-defined]
        assert all(n >= 1 for n in engine["step_threads"].values())  # type: ignore[attr-defined]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        # sampled: the tiny model's end-of-text token comes up about once in 100
        # three-token completions (measured in the engine), so it is ignored here
        done = client.completions.create(model="acme/tiny", prompt="Once", max_tokens=3,
                                         extra_body={"ignore_eos": True})
        assert done.usage is not None and done.usage.completion_tokens == 3
    env = {**os.environ, "GPTSTORE_HOME": str(home), "GPTSTORE_PRELOAD": "acme/tiny, acme/nope"}
    proc = subprocess.run([sys.executable, "-m", "gptstore", "serve", "--port", "0"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "GPTSTORE_PRELOAD names 'acme/nope'" in proc.stderr
