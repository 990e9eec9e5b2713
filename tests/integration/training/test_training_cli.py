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
    _same_figures_in_the_store(doc)

    result = runner.invoke(_app(), ["classify", "acme/cli-sentiment", "the food was great",
                                    "the plot was dull", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [r["label"] for r in rows] == ["positive", "negative"]

    result = runner.invoke(_app(), ["eval", "acme/cli-sentiment", "--data",
                                    str(data["cls_valid"]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["examples"] == 24 and "accuracy" in report["metrics"]

    result = runner.invoke(_app(), ["classify", "acme/cli-sentiment", "fine"])
    assert result.exit_code == 0 and "acme/cli-sentiment@1" in result.stdout


def _same_figures_in_the_store(doc: dict) -> None:
    """The CLI's --json, the lineage, the metrics and the card come from one record."""
    from gptstore.catalog.cards import parse_card
    from gptstore.catalog.repository import Catalog
    from gptstore.settings import Settings
    from gptstore.training.record import MACHINE_FIELDS

    catalog = Catalog(Settings())
    try:
        version = catalog.resolve(doc["ref"])
        card = catalog.card(version)
        card_meta, _ = parse_card(card)
    finally:
        catalog.close()
    # the published lineage leaves out where this machine ran it (paths, threads)
    assert version.lineage["hyperparameters"] == {
        k: v for k, v in doc["config"].items() if k not in MACHINE_FIELDS}
    assert doc["config"]["train_file"] not in card and doc["run_dir"] not in card
    assert version.metrics["final"] == doc["final"]
    assert version.metrics["best"] == doc["best"]
    train = version.metrics["train"]
    assert (train["tokens"], train["steps"], train["tokens_per_second"], train["epochs"]) == (
        doc["train_tokens"], doc["steps"], doc["tokens_per_second"], doc["epochs"])
    # the stored timings stop where publishing starts; --json adds publish and total
    stored = version.metrics["timings"]
    assert stored == {k: v for k, v in doc["timings"].items() if k in stored}
    assert set(doc["timings"]) - set(stored) == {"publish", "total"}
    card_metrics = {m["type"]: m["value"]
                    for m in card_meta["model-index"][0]["results"][0]["metrics"]}
    assert card_metrics == doc["final"]
    assert version.lineage["published_checkpoint"]["step"] == doc["best"]["step"]


def test_format_flag_decides_the_task_when_it_is_auto(cli_store, data, tmp_path):
    """`--format classification` with --task left at auto trains a classifier (it used to
    make the task causal-lm and refuse the file)."""
    runner = CliRunner()
    table = tmp_path / "reviews.data"  # an extension that names no format
    rows = [json.loads(line) for line in data["cls_train"].read_text().splitlines()]
    table.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    result = runner.invoke(_app(), [
        "finetune", "--base", "acme/tiny-llama", "--train", str(table), "--format",
        "classification", "--epochs", "1", "--threads", "1", "--name", "acme/by-format",
        "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "classification" and doc["config"]["task"] == "classification"
    assert doc["config"]["format"] == "classification"
    assert set(doc["final"]) == {"loss", "accuracy", "macro_f1"}


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
