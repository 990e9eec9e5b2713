"""Accounts as an operator and a user meet them: `gptstore users / orgs / keys / audit /
models set` as real processes, then a real server that needs keys, driven by the official
`openai` package with the key a script captured from `keys create`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from gptstore.api.auth import KEY_CACHE_S
from gptstore.testing.server import RemoteServer

pytestmark = pytest.mark.e2e


def gptstore(*args: str, home: Path, stdin: str | None = None, check: bool = True
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPTSTORE_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "gptstore", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"gptstore {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_accounts_from_the_shell_to_the_openai_client(tmp_path: Path,
                                                      tiny_models: dict[str, Path]) -> None:
    home = tmp_path / "home"
    gptstore("users", "add", "alice", "--password-stdin", home=home,
             stdin="correct horse battery\n")
    gptstore("users", "add", "bob", home=home)
    gptstore("orgs", "add", "acme", "--member", "alice:admin", "--member", "bob:read",
             home=home)
    # the key alone on the last line of standard output
    out = gptstore("keys", "create", "alice", "--scope", "write", "--name", "ci",
                   "--expires", "30d", home=home).stdout
    alice_key = out.strip().splitlines()[-1]
    assert alice_key.startswith("gsk_") and " " not in alice_key
    bob_key = gptstore("keys", "create", "bob", "--scope", "read", home=home
                       ).stdout.strip().splitlines()[-1]
    # private model of alice, organisation model of acme (claimed for acme by --owner)
    gptstore("models", "import", str(tiny_models["llama"]), "--name", "alice/tiny",
             "--visibility", "private", home=home)
    gptstore("models", "import", str(tiny_models["llama"]), "--name", "acme/team",
             "--owner", "acme", "--visibility", "org", home=home)
    refused = gptstore("models", "import", str(tiny_models["llama"]), "--name", "acme/x",
                       "--owner", "bob", home=home, check=False)
    assert refused.returncode == 1 and "belongs to another account" in refused.stderr
    keys = json.loads(gptstore("keys", "list", "--json", home=home).stdout)
    assert [(k["user"], k["name"], k["scope"], k["state"]) for k in keys] == [
        ("alice", "ci", "write", "active"), ("bob", "default", "read", "active")]
    assert alice_key not in json.dumps(keys)  # only hashes are kept

    with RemoteServer(home, env={"GPTSTORE_INFERENCE_DTYPE": "float32"}) as server:
        alice = openai.OpenAI(base_url=server.url + "/v1", api_key=alice_key, max_retries=0)
        bob = openai.OpenAI(base_url=server.url + "/v1", api_key=bob_key, max_retries=0)
        assert sorted(m.id for m in alice.models.list()) == ["acme/team", "alice/tiny"]
        assert [m.id for m in bob.models.list()] == ["acme/team"]
        reply = alice.completions.create(model="alice/tiny", prompt="Once", max_tokens=3,
                                         temperature=0)
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        with pytest.raises(openai.NotFoundError):
            bob.completions.create(model="alice/tiny", prompt="Once", max_tokens=3)
        with pytest.raises(openai.PermissionDeniedError):  # a read key cannot upload
            bob.files.create(file=("t.jsonl", b'{"text": "a"}\n'), purpose="fine-tune")
        anonymous = httpx.get(server.url + "/v1/models")
        assert anonymous.status_code == 401 and anonymous.headers["x-request-id"]
        # visibility changed from the shell applies to the running server at once
        gptstore("models", "set", "alice/tiny", "--visibility", "public", home=home)
        assert sorted(m.id for m in bob.models.list()) == ["acme/team", "alice/tiny"]
        gptstore("keys", "revoke", keys[0]["id"], home=home)
        again = gptstore("keys", "revoke", keys[0]["id"], home=home)
        assert "already revoked" in again.stdout
        # the server trusts a verified key for KEY_CACHE_S before asking the database again
        deadline = time.monotonic() + KEY_CACHE_S + 1
        with pytest.raises(openai.AuthenticationError):
            while time.monotonic() < deadline:
                alice.models.list()
                time.sleep(0.2)

    audit = json.loads(gptstore("audit", "--json", home=home).stdout)
    actions = [(e["action"], e["target"]) for e in audit]
    for expected in [("user-create", "alice"), ("org-create", "acme"),
                     ("key-create", "alice"), ("create", "alice/tiny"),
                     ("create", "acme/team"), ("visibility", "alice/tiny"),
                     ("key-revoke", "alice")]:
        assert expected in actions
    assert actions.count(("key-revoke", "alice")) == 1  # revoking again changed nothing
    assert json.loads(gptstore("audit", "--json", "--user", "nobody", home=home).stdout) == []


def test_a_public_address_without_users_refuses_to_start(tmp_path: Path) -> None:
    proc = gptstore("serve", "--host", "0.0.0.0", "--port", "1", home=tmp_path / "home",
                    check=False)
    assert proc.returncode == 1
    assert "gptstore users add" in proc.stderr
