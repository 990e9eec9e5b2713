"""Suites in the store, auto-evaluation on publish, leaderboards and the card's
model-index (tiny models; the built-in suites' packaged data)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptstore.catalog.evaluations import Evaluations, leaderboard
from gptstore.errors import InvalidRequest
from gptstore.evaluation.prompting import PromptFormat
from gptstore.evaluation.suites import add_suite, evaluate_on_suite, install_builtin
from gptstore.settings import Settings

POSITIVE, NEGATIVE = ["great", "good", "friendly", "loved"], ["terrible", "bad", "dull", "hated"]


def sentiment_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"text": f"the {rng.choice(['movie', 'food', 'plot'])} was "
                     f"{rng.choice(POSITIVE if i % 2 == 0 else NEGATIVE)}",
             "label": "positive" if i % 2 == 0 else "negative"} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
          ) -> Iterator[Any]:
    from gptstore.catalog.importers import import_path
    from gptstore.catalog.repository import Catalog

    catalog = Catalog(Settings(home=tmp_path_factory.mktemp("store"), offline=True))
    import_path(catalog, tiny_models["llama"], "acme/tiny-llama")
    folder = tmp_path_factory.mktemp("suite")
    add_suite(catalog, "toy-sentiment", write_jsonl(folder / "toy.jsonl",
                                                    sentiment_rows(24, seed=2)),
              description="toy sentiment", license="CC0-1.0")
    yield catalog
    catalog.close()


def test_builtin_suites_ship_their_redistributable_subsets(store):
    added = {s.name: s for s in install_builtin(store)}
    assert set(added) == {"squad", "nq-open", "mbpp", "tinyshakespeare"}
    assert (added["squad"].examples, added["nq-open"].examples, added["mbpp"].examples) == \
        (100, 200, 50)
    assert added["tinyshakespeare"].metric == "bits_per_byte"
    assert not added["tinyshakespeare"].higher_is_better
    # suite data are blobs the store keeps: gc leaves them
    store.gc(grace_seconds=0)
    for suite in added.values():
        assert Evaluations(store).suite_data(suite).read_bytes()
    with pytest.raises(InvalidRequest, match="--source DIR"):
        install_builtin(store, ["sst2"])


def test_a_builtin_suite_is_built_from_the_upstream_files(store, tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "stsa.binary.dev").write_text(
        "1 a gripping film .\n0 a dull mess .\n1 lovely .\n")
    (suite,) = install_builtin(store, ["sst2"], source=tmp_path)
    assert suite.examples == 3 and suite.prompt["template"] == "Review: {text}\nSentiment:"
    rows = [json.loads(line) for line in
            Evaluations(store).suite_data(suite).read_text().splitlines()]
    assert rows[1] == {"text": "a dull mess .", "label": "negative"}


def test_causal_lm_suite_records_bits_per_byte(store):
    install_builtin(store, ["tinyshakespeare"])
    report, result = evaluate_on_suite(store, "acme/tiny-llama", "tinyshakespeare")
    assert result.score == report.metrics["bits_per_byte"] > 0
    assert report.examples >= 1


def test_fine_tune_is_evaluated_on_publish_and_ranked_beside_its_base(store):
    from fastapi.testclient import TestClient

    from gptstore.api.app import build_app
    from gptstore.training import TrainConfig, finetune

    folder = store.settings.home / "data"
    folder.mkdir(exist_ok=True)
    config = TrainConfig(
        base="acme/tiny-llama", name="acme/toy-sentiment", task="classification",
        train_file=str(write_jsonl(folder / "train.jsonl", sentiment_rows(64, seed=1))),
        valid_file=str(write_jsonl(folder / "valid.jsonl", sentiment_rows(16, seed=3))),
        method="lora", epochs=3, batch_size=8, learning_rate=1e-2, eval_every=0,
        save_every=0, eval_suite="toy-sentiment")
    result = finetune(config, settings=store.settings, catalog=store)
    scored = {e["model"]: e for e in result.evaluations}
    assert set(scored) == {"acme/tiny-llama@1", "acme/toy-sentiment@1"}
    assert scored["acme/tiny-llama@1"]["mode"] == "0-shot"
    assert scored["acme/toy-sentiment@1"]["mode"] == "classifier"

    suite = Evaluations(store).get_suite("toy-sentiment")
    with TestClient(build_app(store.settings)) as client:
        response = client.get("/api/leaderboards/toy-sentiment")
        assert response.status_code == 200, response.text
        board = response.json()
        missing = client.get("/api/leaderboards/nope")
        assert missing.status_code == 404 and "no evaluation suite" in \
            missing.json()["error"]["message"]
        card = client.get("/api/models/acme/toy-sentiment/card").text
        version = client.get(board["rows"][1]["url"]).json()
        model = client.get("/api/models/acme/toy-sentiment").json()
    assert version["base"] == "acme/tiny-llama@1"
    # the version lists its results (the model page shows them, linked to the board)
    assert model["versions"][0]["evaluations"] == version["evaluations"]
    [evaluation] = version["evaluations"]
    assert evaluation["suite"] == "toy-sentiment" and evaluation["metric"] == "accuracy"
    assert evaluation["score"] == scored["acme/toy-sentiment@1"]["score"]
    assert evaluation["current"] and evaluation["data_digest"] == suite.data_digest
    assert board["suite"]["data_digest"] == suite.data_digest
    rows = board["rows"]
    assert [r["ref"] for r in rows] == ["acme/tiny-llama@1", "acme/toy-sentiment@1"]
    assert rows[0]["is_base"] and not rows[1]["is_base"]
    assert rows[1]["lineage"]["base"] == "acme/tiny-llama@1"
    assert all(r["data_digest"] == suite.data_digest for r in rows)
    assert rows[1]["score"] == scored["acme/toy-sentiment@1"]["score"]
    # the model card carries the suite result in its model-index
    from gptstore.catalog.cards import parse_card

    meta, _ = parse_card(card)
    entries = meta["model-index"][0]["results"]
    suite_entry = next(e for e in entries if e["dataset"]["name"] == "toy-sentiment")
    assert suite_entry["dataset"]["revision"] == suite.data_digest
    accuracy = next(m for m in suite_entry["metrics"] if m["type"] == "accuracy")
    assert accuracy["value"] == rows[1]["score"]


def test_results_on_other_data_are_not_ranked_together(store, tmp_path):
    evaluate_on_suite(store, "acme/tiny-llama", "toy-sentiment")
    before = leaderboard(store, "toy-sentiment")["rows"]
    add_suite(store, "toy-sentiment", write_jsonl(tmp_path / "new.jsonl",
                                                  sentiment_rows(10, seed=9)), replace=True)
    assert leaderboard(store, "toy-sentiment")["rows"] == []  # measured on the old data
    assert before
    # the version still lists its result, marked as measured on other data
    version = store.resolve("acme/tiny-llama")
    [(suite, old)] = [(s, r) for s, r in Evaluations(store).results_of_versions(
        [version.id])[version.id] if s.name == "toy-sentiment"]
    from gptstore.api.store.catalog import evaluation_public

    assert evaluation_public(suite, old).current is False  # listed, marked as not ranked


def test_unknown_eval_suite_is_refused_before_training(store):
    from gptstore.training import TrainConfig, finetune

    config = TrainConfig(base="acme/tiny-llama", name="acme/never", task="classification",
                         train_file=str(write_jsonl(store.settings.home / "t.jsonl",
                                                    sentiment_rows(8, seed=1))),
                         eval_suite="no-such-suite")
    with pytest.raises(InvalidRequest, match="eval_suite: no evaluation suite") as info:
        finetune(config, settings=store.settings, catalog=store)
    assert info.value.param == "eval_suite"
    assert not store.exists("acme/never")


def test_suite_checks_its_metric_and_prompt(store, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q?", "answers": ["a"]}])
    with pytest.raises(InvalidRequest, match="metric 'bleu' is not reported for qa"):
        add_suite(store, "toy-qa", data, metric="bleu")
    suite = add_suite(store, "toy-qa", data, prompt=PromptFormat(max_tokens=4, shots=0))
    assert (suite.task, suite.metric, suite.prompt["max_tokens"]) == ("qa", "f1", 4)
    with pytest.raises(InvalidRequest, match="suite name"):
        add_suite(store, "Bad Name", data)


def test_cli_eval_suite_and_leaderboard(store, monkeypatch):
    from typer.testing import CliRunner

    from gptstore.cli.app import app

    monkeypatch.setenv("GPTSTORE_HOME", str(store.settings.home))
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "acme/tiny-llama", "--suite", "nq-open", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "qa" and doc["examples"] == 200 and "exact_match" in doc["metrics"]
    result = runner.invoke(app, ["leaderboard", "nq-open"])
    assert result.exit_code == 0, result.output
    assert "acme/tiny-llama@1" in result.stdout
    result = runner.invoke(app, ["suites", "list"])
    assert result.exit_code == 0 and "nq-open" in result.stdout
