"""The running server's record in its home (api/runtime.py): what it holds, that a stale
or silent record is not taken for a server, and that a server removes only its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptstore.api.runtime import RUNTIME_FILE, forget_server, record_server, running_server
from gptstore.cli.remote import Refused, stream_text
from gptstore.testing.server import free_port


@pytest.mark.parametrize(("host", "url_host"), [("127.0.0.1", "127.0.0.1"),
                                                ("0.0.0.0", "127.0.0.1"),
                                                ("::", "[::1]"), ("::1", "[::1]"),
                                                ("localhost", "localhost")])
def test_the_record_holds_an_address_this_machine_reaches(tmp_path: Path, host: str,
                                                          url_host: str) -> None:
    path = record_server(tmp_path, host, 8123)
    assert path == tmp_path / RUNTIME_FILE
    assert json.loads(path.read_text()) == {"url": f"http://{url_host}:8123",
                                            "pid": os.getpid()}
    assert [p.name for p in tmp_path.iterdir()] == [RUNTIME_FILE]  # no temp file left


def test_no_record_without_a_known_port_or_a_writable_home(tmp_path: Path) -> None:
    assert record_server(tmp_path, "127.0.0.1", 0) is None
    assert record_server(tmp_path / "missing", "127.0.0.1", 8123) is None
    assert not list(tmp_path.iterdir())


def test_a_server_removes_its_own_record_only(tmp_path: Path) -> None:
    path = record_server(tmp_path, "127.0.0.1", 8123)
    forget_server(path)
    assert not path.exists()  # type: ignore[union-attr]
    path = record_server(tmp_path, "127.0.0.1", 8123)
    assert path is not None
    path.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid() + 1}))
    forget_server(path)  # another server has replaced it since
    assert path.exists()
    forget_server(None)


def test_stale_silent_or_broken_records_are_no_server(tmp_path: Path) -> None:
    path = tmp_path / RUNTIME_FILE
    assert running_server(tmp_path) is None  # no record
    path.write_text("{not json")
    assert running_server(tmp_path) is None
    # a record of this process is never asked (it would wait on itself)
    record_server(tmp_path, "127.0.0.1", free_port())
    assert running_server(tmp_path) is None
    # a dead process
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path.write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}", "pid": gone.pid}))
    assert running_server(tmp_path) is None
    # a live process that does not answer on the recorded address
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}",
                                    "pid": alive.pid}))
        assert running_server(tmp_path) is None
    finally:
        alive.kill()
        alive.wait()


def test_a_server_gone_since_the_probe_leaves_the_command_to_its_engine() -> None:
    """Nothing listens: `Refused`, which sends `generate` and `chat` to their own engine
    before any text was printed."""
    with pytest.raises(Refused):
        list(stream_text(f"http://127.0.0.1:{free_port()}", "acme/tiny", {"max_tokens": 4},
                         messages=[{"role": "user", "content": "hi"}]))
