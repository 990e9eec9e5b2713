"""The running server's record in its home (`RUNTIME_FILE`): where `gptstore serve`
listens, so the CLI's `generate` and `chat` of the same store can ask it instead of
loading the model themselves (cli/remote.py, docs/design.md "The CLI and a running
server"). Written atomically when the server starts (api/app.py's lifespan), removed
when it stops; a record left by a killed server is recognised by its dead process or
its silence."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gptstore.settings import local_url

RUNTIME_FILE = "server.json"
#: how long a client waits for a recorded server's `/healthz`
PROBE_TIMEOUT_S = 0.5


def record_server(home: Path, host: str, port: int) -> Path | None:
    """Record in `home` that this process serves the store at host:port (None where the
    port is chosen by the system, so no address can be recorded)."""
    if not port:
        return None
    path = home / RUNTIME_FILE
    doc = {"url": local_url(host, port), "pid": os.getpid()}
    try:
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".server-", suffix=".json")
    except OSError:  # a home it cannot write: the CLI loads models itself, as before
        return None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return None
    return path


def forget_server(path: Path | None) -> None:
    """Remove this process's record (not another server's that replaced it)."""
    if path is None:
        return
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def running_server(home: Path) -> str | None:
    """The base URL of the `gptstore serve` recorded in `home`, if it is running and
    answers now; else None (a stale record, a server still starting or stopping)."""
    import httpx

    try:
        doc = json.loads((home / RUNTIME_FILE).read_text())
        url, pid = str(doc["url"]), int(doc["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or not _alive(pid):
        return None
    try:
        answer = httpx.get(f"{url}/healthz", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return url if answer.status_code == 200 else None
