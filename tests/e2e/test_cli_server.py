"""`gptstore generate` and `chat` ask a running `gptstore serve` of the same store
(cli/remote.py, api/runtime.py): the same answers as the model run in the command's own
process, the server's engine doing the work; a server that refuses the command's key
leaves it to its own engine; and the record goes when the server stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gptstore.api.runtime import RUNTIME_FILE, running_server
from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer
from gptstore.testing.tiny import make_tiny_classifier

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("cli-server") / "home"
    catalog = Catalog(Settings(home=root))
    import_path(catalog, tiny_models["llama"], "acme/tiny")
    # an imported classifier (its head's labels read from its config), labels out of
    # alphabetical order: the table keeps the model's own order
    classifier = make_tiny_classifier(tiny_models["llama"], root.parent / "clf",
                                      ["positive", "negative", "mixed"])
    import_path(catalog, classifier, "acme/clf")
    catalog.close()
    return root


def gptstore(*args: str, home: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GPTSTORE_API_KEY"}
    env.update(GPTSTORE_HOME=str(home), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "gptstore", *args], env=env,
                          capture_output=True, text=True, timeout=300, input=stdin)


def _engine(server: RemoteServer) -> dict[str, object]:
    return httpx.get(server.url + "/api/engine").json()  # type: ignore[no-any-return]


GREEDY = ("--max-tokens", "8", "--temperature", "0")
TEXTS = ("the film was wonderful", "a dull and tired plot")


@pytest.fixture(scope="module")
def local_answers(home: Path) -> dict[str, str]:
    """The answers of the model run in the command's own process (no server yet)."""
    assert running_server(home) is None
    out = {}
    for mode, extra in (("chat", ()), ("raw", ("--raw",))):
        proc = gptstore("generate", "acme/tiny", "hello world", *GREEDY, *extra, home=home)
        assert proc.returncode == 0, proc.stderr
        out[mode] = proc.stdout
    proc = gptstore("classify", "acme/clf", *TEXTS, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    out["classify"] = proc.stdout
    return out


@pytest.fixture
def server(home: Path, local_answers: dict[str, str]) -> Iterator[RemoteServer]:
    with RemoteServer(home) as srv:
        yield srv


def test_generate_asks_the_running_server_and_answers_as_the_local_engine(
        home: Path, server: RemoteServer, local_answers: dict[str, str]) -> None:
    record = json.loads((home / RUNTIME_FILE).read_text())
    assert record == {"url": server.url, "pid": server.proc.pid}
    assert running_server(home) == server.url
    assert _engine(server) == {"started": False}
    for mode, extra in (("chat", ()), ("raw", ("--raw",))):
        proc = gptstore("generate", "acme/tiny", "hello world", *GREEDY, *extra, home=home)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == local_answers[mode] and proc.stdout.strip()
    stats = _engine(server)
    assert stats["started"] and list(stats["loaded"]) and stats["steps"]  # type: ignore[arg-type]
    # --local runs the model in the command's process: the server takes no step
    steps = stats["steps"]
    proc = gptstore("generate", "acme/tiny", "hello world", *GREEDY, "--local", home=home)
    assert proc.stdout == local_answers["chat"]
    assert _engine(server)["steps"] == steps


def test_classify_asks_the_running_server_and_answers_as_the_local_engine(
        home: Path, server: RemoteServer, local_answers: dict[str, str]) -> None:
    proc = gptstore("classify", "acme/clf", *TEXTS, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    remote, local = json.loads(proc.stdout), json.loads(local_answers["classify"])
    assert [r["label"] for r in remote["results"]] == [r["label"] for r in local["results"]]
    for mine, theirs in zip(remote["results"], local["results"], strict=True):
        assert list(mine["probabilities"]) == ["positive", "negative", "mixed"]
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)
    assert list(_engine(server)["loaded"])  # type: ignore[call-overload]  # the server's
    table = gptstore("classify", "acme/clf", *TEXTS, home=home).stdout
    assert table.index("positive") < table.index("negative") < table.index("mixed")
    missing = gptstore("classify", "nobody/missing", "hi", home=home)
    assert missing.returncode == 1 and "nobody/missing" in missing.stderr


def test_chat_keeps_the_conversation_through_the_server(home: Path,
                                                        server: RemoteServer) -> None:
    proc = gptstore("chat", "acme/tiny", *GREEDY, home=home,
                    stdin="hello\nand again\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert f"through the server at {server.url}" in proc.stdout
    assert _engine(server)["steps"]


def test_a_turn_that_does_not_fit_the_context_is_dropped_and_the_chat_goes_on(
        home: Path, server: RemoteServer) -> None:
    """The tiny model's context is 256 tokens: --max-tokens 240 leaves no room for a
    40-word message; the command says so, drops that turn and answers the next."""
    long = " ".join(["word"] * 40)
    for where in ((), ("--local",)):
        proc = gptstore("chat", "acme/tiny", "--max-tokens", "240", "--temperature", "0",
                        *where, home=home, stdin=f"{long}\nhi\n/exit\n")
        assert proc.returncode == 0, proc.stderr
        assert "the model's context is 256 tokens" in proc.stdout, where
        assert "/reset starts over" in proc.stdout and "Traceback" not in proc.stderr


def test_server_errors_are_the_commands_errors(home: Path, server: RemoteServer) -> None:
    proc = gptstore("generate", "nobody/missing", "hi", home=home)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "nobody/missing" in proc.stderr and "models list" in proc.stderr


def test_a_server_that_wants_a_key_leaves_the_command_to_its_own_engine(
        home: Path, local_answers: dict[str, str]) -> None:
    with RemoteServer(home, env={"GPTSTORE_AUTH": "required"}) as srv:
        assert running_server(home) == srv.url
        assert httpx.post(srv.url + "/v1/completions",
                          json={"model": "acme/tiny", "prompt": "hi"}).status_code == 401
        proc = gptstore("generate", "acme/tiny", "hello world", *GREEDY, home=home)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == local_answers["chat"]


def test_the_record_goes_when_the_server_stops(home: Path) -> None:
    srv = RemoteServer(home)
    assert (home / RUNTIME_FILE).is_file()
    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(timeout=30)
    srv.close()
    assert not (home / RUNTIME_FILE).exists()
    assert running_server(home) is None
