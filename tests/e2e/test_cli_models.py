"""The `gptstore` command as a user runs it: a real process, exit codes, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def gptstore(*args: str, home: Path, check: bool = True, columns: int = 200
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPTSTORE_HOME": str(home), "COLUMNS": str(columns)}
    proc = subprocess.run([sys.executable, "-m", "gptstore", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"gptstore {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPTSTORE_INT4_KERNEL", "fbgemm")
    proc = gptstore("models", "list", home=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "GPTSTORE_INT4_KERNEL='fbgemm'" in proc.stderr and "native-all" in proc.stderr


@pytest.mark.parametrize(("args", "code"), [(["models", "list"], 0),
                                           (["models", "show", "nobody/nothing"], 1)])
def test_the_command_ends_with_its_exit_code_its_atexit_hooks_and_objects_frozen(
        tmp_path: Path, args: list[str], code: int) -> None:
    """`main` freezes the objects alive when the command is done (the interpreter's
    teardown then skips them: ~1 s with torch and transformers loaded), keeping the exit
    code and every atexit hook."""
    script = ("import atexit, gc, sys\n"
              "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
              f"sys.argv = ['gptstore', *{args!r}]\n"
              "from gptstore.cli.app import main\n"
              "main()\n")
    env = {**os.environ, "GPTSTORE_HOME": str(tmp_path), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.strip().endswith("frozen True")


def test_help_lists_settings(tmp_path: Path) -> None:
    for args in (["--help"], ["serve", "--help"]):
        out = gptstore(*args, home=tmp_path).stdout
        for var in ("GPTSTORE_HOME", "GPTSTORE_DATABASE_URL", "GPTSTORE_HOST", "GPTSTORE_PORT",
                    "GPTSTORE_NATIVE_KERNELS"):
            assert var in out


def test_models_lifecycle(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    home = tmp_path / "home"
    assert json.loads(gptstore("models", "list", "--json", home=home).stdout) == []
    gptstore("models", "import", str(tiny_models["llama"]), "--name", "acme/tiny",
             "--license", "mit", home=home)
    listed = json.loads(gptstore("models", "list", "--json", home=home).stdout)
    assert [m["name"] for m in listed] == ["acme/tiny"]
    shown = json.loads(gptstore("models", "show", "acme/tiny", "--json", home=home).stdout)
    assert shown["versions"][0]["lineage"]["model_type"] == "llama"
    assert shown["card"].startswith("---\n")
    assert "model.safetensors" in gptstore("models", "show", "acme/tiny", home=home).stdout
    out = tmp_path / "exported"
    gptstore("models", "export", "acme/tiny", str(out), home=home)
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    text = gptstore("generate", "acme/tiny", "hello world", "--max-tokens", "5",
                    "--temperature", "0", "--raw", home=home).stdout
    expected = _greedy_reference(out, "hello world", 5)
    assert expected.strip() and text == expected + "\n"
    assert "(1 version)" in gptstore("models", "rm", "acme/tiny", "--yes", home=home).stdout
    assert json.loads(gptstore("models", "list", "--json", home=home).stdout) == []
    # within the grace period the files stay, and gc says so
    assert "kept" in gptstore("gc", home=home).stdout
    collected = gptstore("gc", "--grace", "0", home=home).stdout
    assert "removed" in collected and "kept" not in collected


def _greedy_reference(folder: Path, prompt: str, max_tokens: int) -> str:
    """What plain transformers generates greedily from the exported folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                             attention_mask=torch.ones_like(ids))
    new = out[0, ids.shape[1]:].tolist()
    assert new, "the reference generated nothing"
    return str(tokenizer.decode(new, skip_special_tokens=True))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "show", "acme/none"], "is not in the store"),
        (["models", "show", "../x"], "invalid namespace"),
        (["models", "import", "/no/such/path", "--name", "acme/x"], "does not exist"),
        (["generate", "a b/c", "hi"], "invalid namespace"),
        (["models", "pull", "someone/else"], "Only the built-in"),
        (["models", "list", "--task", "bogus"], "unknown task 'bogus'"),
        (["files", "upload", "/no/such.jsonl"], "/no/such.jsonl is not a file"),
        (["keys", "create", "alice", "--expires", "90"], "--expires '90': give a duration"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    # one line even in a narrow terminal, where rich would wrap it
    proc = gptstore(*args, home=tmp_path / "home", check=False, columns=40)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
