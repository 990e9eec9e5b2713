"""`gptstore data validate` driven through its Typer app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gptstore.cli.data import app
from gptstore.data import CPU_LORA_TOKENS_PER_SECOND

runner = CliRunner()
GOOD = [{"messages": [{"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello there"}]},
        {"prompt": "unused", "messages": [{"role": "user", "content": "2+2?"},
                                          {"role": "assistant", "content": "4"}]}]


def write_jsonl(tmp_path: Path, rows: list[Any], name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture
def store_base(settings: Any, tiny_models: dict[str, Path]) -> str:
    """A real store (in GPTSTORE_HOME) holding a tiny Llama with a 256-token context."""
    from gptstore.catalog.importers import import_path
    from gptstore.catalog.repository import Catalog

    catalog = Catalog(settings)
    try:
        import_path(catalog, tiny_models["llama"], "tiny/base")
    finally:
        catalog.close()
    return "tiny/base"


def test_json_output_for_a_good_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(write_jsonl(tmp_path, GOOD)), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["format"] == "chat" and report["examples"] == 2
    assert report["tokens"] is None and report["errors"] == []


def test_rich_output_for_a_good_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(write_jsonl(tmp_path, GOOD))])
    assert result.exit_code == 0, result.output
    assert "Training file train.jsonl" in result.output and "chat" in result.output
    assert "not counted (pass --base MODEL)" in result.output
    assert "ready to train" in result.output


def test_errors_exit_1_with_lines_in_both_modes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [*GOOD, "{oops", {"messages": [{"role": "user",
                                                                 "content": "alone"}]}])
    result = runner.invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [(e["line"], e["rule"]) for e in report["errors"]] == [
        (3, "invalid_json"), (4, "no_assistant")]
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "invalid_json" in result.output and "no_assistant" in result.output
    assert "2 errors" in result.output and "training refuses" in result.output


def test_base_counts_tokens_and_estimates_time(tmp_path: Path, store_base: str) -> None:
    path = write_jsonl(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "--base", "tiny/base", "--json",
                                 "--epochs", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["max_length"] == 256  # the tokenizer's context length (< 1024)
    # nothing has been fine-tuned on this base here: the reference figure, said so
    assert report["tokens_per_second"] == CPU_LORA_TOKENS_PER_SECOND
    assert "reference figure" in report["estimate_basis"]
    assert report["estimated_training_seconds"] == pytest.approx(
        report["tokens"]["total"] * 2 / CPU_LORA_TOKENS_PER_SECOND, abs=0.1)
    rich = runner.invoke(app, ["validate", str(path), "--base", "tiny/base"])
    assert rich.exit_code == 0, rich.output
    assert "tiny/base" in rich.output and "estimated training time" in rich.output
    assert f"{report['tokens']['total']}" in rich.output
    # --max-length overrides the context; cut examples show up as warnings
    short = runner.invoke(app, ["validate", str(path), "--base", "tiny/base", "--max-length",
                                "4", "--json"])
    assert short.exit_code == 0, short.output
    cut = json.loads(short.output)
    assert cut["max_length"] == 4 and cut["truncated"] == 2
    assert {w["rule"] for w in cut["warnings"]} == {"truncated", "no_loss_after_truncation"}


def test_task_and_format_options(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, GOOD)
    result = runner.invoke(app, ["validate", str(path), "--task", "classification", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["errors"][0]["rule"] == "wrong_task"
    result = runner.invoke(app, ["validate", str(path), "--format", "prompt-completion",
                                 "--json"])
    assert result.exit_code == 1  # forced format: line 1 has no prompt
    assert json.loads(result.output)["errors"][0]["rule"] == "missing_key"
    result = runner.invoke(app, ["validate", str(path), "--format", "yaml"])
    assert result.exit_code == 1 and "unknown data format 'yaml'" in result.output


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.jsonl"), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["type"] == "not_found_error"


def test_the_estimate_uses_this_stores_runs_of_the_most_similar_step_size(
        tmp_path: Path, settings: Any, store_base: str) -> None:
    """Finished LoRA fine-tunes of the base give the throughput: the runs whose tokens
    per step are nearest the new file's (here: batch 1 of ~16-token chats, so the slow
    small-step runs), their median; another method's and another base's runs do not
    count."""
    from gptstore.catalog.repository import Catalog

    catalog = Catalog(settings)
    weights = tmp_path / "adapter"
    weights.mkdir()
    (weights / "adapter_model.safetensors").write_bytes(b"x")
    base = catalog.resolve(store_base)

    def run(name: str, tokens_per_step: float, rate: float, method: str = "lora") -> None:
        steps = 100
        catalog.publish(name, weights, kind="adapter", base=base.ref,
                        lineage={"source": "finetune", "method": method},
                        metrics={"train": {"tokens": int(tokens_per_step * steps),
                                           "seconds": tokens_per_step * steps / rate,
                                           "steps": steps}})

    run("me/small-a", 15, 20.0)
    run("me/small-b", 18, 24.0)
    run("me/small-c", 12, 16.0)
    run("me/big", 400, 300.0)
    run("me/full", 16, 5.0, method="full")
    catalog.close()
    result = runner.invoke(app, ["validate", str(write_jsonl(tmp_path, GOOD)), "--base",
                                 store_base, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tokens_per_second"] == pytest.approx(20.0)  # small-a/b/c's median
    assert "measured" in report["estimate_basis"] and "3 runs" in report["estimate_basis"]
    assert report["estimated_training_seconds"] == pytest.approx(
        report["tokens"]["total"] / 20.0, abs=0.1)
