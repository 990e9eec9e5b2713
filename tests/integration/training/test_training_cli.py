"""`gptstore finetune / classify / eval` through the CLI (Typer's runner, tiny models)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gptstore.errors import InvalidRequest


@pytest.fixture
def cli_store(tiny_models, monkeypatch, tmp_path):
    """The CLI's store (GPTSTORE_HOME of this test) with acme/tiny-llama imported."""
    from gptstore.catalog.importers import import_path
    from gptstore.catalog.repository import Catalog
    from gptstore.settings import Settings

    catalog = Catalog(Settings())
    import_path(catalog, tiny_models["llama"], "acme/tiny-llama")
    catalog.close()


def _app():
    from gptstore.cli.app import app

    return app


def test_finetune_json_classify_and_eval(cli_store, data):
    runner = CliRunner()
    result = runner.invoke(_app(), [
        "finetune", "--base", "acme/tiny-llama", "--train", str(data["cls_train"]),
        "--valid", str(data["cls_valid"]), "--task", "classification", "--method", "lora",
        "--epochs", "3", "--lr", "0.01", "--batch-size", "8", "--lora-target",
        "q_proj,v_proj", "--eval-every", "12", "--seed", "3", "--threads", "1",
        "--name", "acme/cli-sentiment", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["name"] == "acme/cli-sentiment" and doc["ref"] == "acme/cli-sentiment@1"
    for key in ("train_tokens", "train_seconds", "tokens_per_second", "final", "best"):
        assert key in doc
    assert doc["train_tokens"] > 0 and doc["steps"] == 36
    assert doc["config"]["lora_target"] == ["q_proj", "v_proj"] and doc["config"]["seed"] == 3
    assert set(doc["final"]) == {"loss", "accuracy", "macro_f1"}

    result = runner.invoke(_app(), ["classify", "acme/cli-sentiment", "the food was great",
                                    "the plot was dull", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [r["label"] in ("negative", "positive") for r in rows] == [True, True]

    result = runner.invoke(_app(), ["eval", "acme/cli-sentiment", "--data",
                                    str(data["cls_valid"]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["examples"] == 24 and "accuracy" in report["metrics"]

    result = runner.invoke(_app(), ["classify", "acme/cli-sentiment", "fine"])
    assert result.exit_code == 0 and "acme/cli-sentiment@1" in result.stdout


def test_finetune_summary_and_bad_values(cli_store, data):
    runner = CliRunner()
    result = runner.invoke(_app(), [
        "finetune", "--base", "acme/tiny-llama", "--train", str(data["lm_train"]),
        "--method", "head", "--epochs", "1", "--batch-size", "16", "--threads", "1",
        "--name", "acme/cli-lm"])
    assert result.exit_code == 0, result.output
    assert "published acme/cli-lm@1" in result.stdout and "tok" in result.stdout
    for flag, value, field in (("--lr", "0", "learning_rate"), ("--batch-size", "0",
                                                                 "batch_size")):
        result = runner.invoke(_app(), ["finetune", "--base", "acme/tiny-llama", "--train",
                                        str(data["lm_train"]), "--name", "acme/x", flag,
                                        value])
        assert isinstance(result.exception, InvalidRequest)
        assert result.exception.param == field and field in result.exception.message
