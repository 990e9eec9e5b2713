"""Limits of a real server: max_tokens over the deployment's cap is a 400, a client that
hangs up on a non-streaming request frees its slot at once, SIGTERM drains in-flight
requests for the grace period and then stops, and one key cannot take every slot."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer
from gptstore.testing.tiny import make_tiny_model

pytestmark = pytest.mark.e2e
#: long enough that a request outlives every check below (the tiny model decodes
#: hundreds of tokens a second)
LONG = {"model": "acme/long", "prompt": "Once", "max_tokens": 15000, "temperature": 1.0,
        "ignore_eos": True}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits")
    catalog = Catalog(Settings(home=root / "home"))
    import_path(catalog, make_tiny_model("llama", root / "long", max_position_embeddings=16384),
                "acme/long")
    catalog.close()
    return root / "home"


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RemoteServer]:
    env = {"GPTSTORE_MAX_TOKENS": "15000", "GPTSTORE_SHUTDOWN_GRACE_SECONDS": "2"}
    with RemoteServer(home, env=env) as srv:
        yield srv


def _engine(server: RemoteServer) -> dict[str, int]:
    return httpx.get(server.url + "/api/engine").json()  # type: ignore[no-any-return]


def _wait_for(server: RemoteServer, running: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _engine(server).get("running") != running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _engine(server).get("running") == running


def test_max_tokens_over_the_cap_is_a_400(server: RemoteServer) -> None:
    # generous timeout: the first request loads torch and the model
    response = httpx.post(server.url + "/v1/completions",
                          json={**LONG, "max_tokens": 100_000_000}, timeout=120)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "GPTSTORE_MAX_TOKENS" in error["message"]
    chat = httpx.post(server.url + "/v1/chat/completions", json={
        "model": "acme/long", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100_000_000}, timeout=60)
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "max_tokens"


def test_a_client_that_hangs_up_frees_its_slot(server: RemoteServer) -> None:
    with pytest.raises(httpx.ReadTimeout):  # the client gives up on a long JSON answer
        httpx.post(server.url + "/v1/completions", json=LONG, timeout=3)
    _wait_for(server, 0, timeout=5)


def test_sigterm_drains_for_the_grace_period_then_stops(home: Path) -> None:
    env = {"GPTSTORE_MAX_TOKENS": "15000", "GPTSTORE_SHUTDOWN_GRACE_SECONDS": "2"}
    srv = RemoteServer(home, env=env)
    try:
        # warm up (the first request loads torch and the model)
        assert httpx.post(srv.url + "/v1/completions", json={**LONG, "max_tokens": 2},
                          timeout=120).status_code == 200
        answers: list[object] = []

        def long_request() -> None:
            try:
                answers.append(httpx.post(srv.url + "/v1/completions", json=LONG,
                                          timeout=60).status_code)
            except httpx.HTTPError as exc:
                answers.append(type(exc).__name__)

        thread = threading.Thread(target=long_request)
        thread.start()
        _wait_for(srv, 1)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        took = time.monotonic() - started
        thread.join(timeout=30)
        # stopped after the grace period (2 s), not after the 15,000 tokens
        assert 1.5 <= took < 15, took
        assert answers and answers[0] != 200
    finally:
        srv.close()
