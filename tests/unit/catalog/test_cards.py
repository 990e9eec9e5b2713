"""Model cards: the YAML front matter (the Hub's metadata) and the markdown body, parsed
back and compared with exact values."""

from __future__ import annotations

import re

import yaml

from gptstore.catalog.cards import CardData, headline_metrics, parse_card, render_card


def _rows(body: str, section: str) -> dict[str, str]:
    """The `| key | value |` rows of the table under `## section` (or the first table
    when `section` is empty)."""
    text = body.split(f"## {section}\n", 1)[1] if section else body
    table = text.split("\n\n", 1)[0] if section else text.split("| | |\n", 1)[1]
    rows = {}
    for line in table.splitlines():
        match = re.fullmatch(r"\| (.+?) \| (.*) \|", line)
        if match and match.group(1) not in (" ", "---"):
            rows[match.group(1)] = match.group(2)
        elif rows and not line.startswith("|"):
            break
    return rows


def _sentiment_card() -> CardData:
    return CardData(
        name="acme/sentiment", version=2, task="classification",
        description="  Says whether a review is positive.  ", license="mit",
        tags=["sentiment", "gptstore", "sentiment"], kind="adapter",
        base_model="acme/base@1",
        lineage={"seed": 7, "dataset": {"name": "sst2.jsonl", "digest": "sha256:ab12"},
                 "note": "a|b"},
        metrics={"final": {"accuracy": 0.91, "loss": 0.25},
                 "train": {"loss": 0.5, "steps": 10},
                 "run": {"stopped_early": True, "reason": "patience"},
                 "curves": {"train_loss": [[1, 2.0], [2, 1.5], [3, 1.25]], "empty": []}},
        label_names=["neg", "pos"],
    )


def test_front_matter_of_a_classifier_adapter() -> None:
    text = render_card(_sentiment_card())
    assert text.startswith("---\n")
    meta, _body = parse_card(text)
    assert list(meta) == ["license", "base_model", "library_name", "pipeline_tag", "tags",
                          "datasets", "model-index"]
    assert meta == {
        "license": "mit",
        "base_model": "acme/base@1",
        "library_name": "peft",
        "pipeline_tag": "text-classification",
        "tags": ["gptstore", "sentiment"],
        "datasets": ["sst2.jsonl"],
        "model-index": [{
            "name": "acme/sentiment",
            "results": [{
                "task": {"type": "text-classification"},
                "dataset": {"name": "sst2.jsonl", "type": "custom"},
                "metrics": [
                    {"type": "accuracy", "value": 0.91, "name": "accuracy"},
                    {"type": "loss", "value": 0.25, "name": "loss"},
                ],
            }],
        }],
    }


def test_body_facts_lineage_metrics_and_use() -> None:
    _meta, body = parse_card(render_card(_sentiment_card()))
    assert body.startswith("\n# acme/sentiment\n\nSays whether a review is positive.\n\n")
    assert _rows(body, "") == {
        "version": "2", "task": "classification", "kind": "LoRA adapter",
        "base model": "`acme/base@1`", "license": "mit", "labels": "neg, pos",
    }
    lineage = _rows(body, "Lineage")
    assert list(lineage) == ["seed", "dataset", "note"]
    assert lineage["seed"] == "7"
    assert lineage["note"] == "a\\|b"  # a pipe would end the table cell
    assert lineage["dataset"].startswith("`") and lineage["dataset"].endswith("`")
    assert yaml.safe_load(lineage["dataset"][1:-1]) == {"name": "sst2.jsonl",
                                                          "digest": "sha256:ab12"}
    metrics = _rows(body, "Metrics")
    # dicts of numbers are spread into rows, anything else is one YAML cell, curves
    # get their own section
    assert list(metrics) == ["final accuracy", "final loss", "train loss", "train steps",
                             "run"]
    assert [metrics[k] for k in ("final accuracy", "final loss", "train loss",
                                 "train steps")] == ["0.91", "0.25", "0.5", "10"]
    assert yaml.safe_load(metrics["run"][1:-1]) == {"stopped_early": True,
                                                    "reason": "patience"}
    curves = body.split("### Training curves\n", 1)[1].split("\n## ", 1)[0]
    assert curves.strip() == "- train_loss: 3 points, first 2, min 1.25, last 1.25"
    use = body.split("## Use\n", 1)[1]
    assert use.strip() == '```\ngptstore classify acme/sentiment "some text"\n```'


def test_a_bare_causal_lm_card() -> None:
    meta, body = parse_card(render_card(CardData(name="acme/m", version=1)))
    assert meta == {"library_name": "transformers", "pipeline_tag": "text-generation",
                    "tags": ["gptstore"]}
    assert "## Lineage" not in body and "## Metrics" not in body
    assert _rows(body, "") == {"version": "1", "task": "causal-lm", "kind": "full model"}
    assert 'model="acme/m", messages=[{"role": "user", "content": "Hello!"}]' in body


def test_top_level_numbers_are_the_headline_without_final() -> None:
    card = CardData(name="acme/m", version=1,
                    metrics={"perplexity": 12, "accuracy": 0.5, "flag": True, "note": "x"})
    meta, _ = parse_card(render_card(card))
    assert meta["model-index"][0]["results"][0]["metrics"] == [
        {"type": "accuracy", "value": 0.5, "name": "accuracy"},
        {"type": "perplexity", "value": 12.0, "name": "perplexity"},
    ]
    assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "validation set",
                                                               "type": "custom"}


def test_headline_metrics() -> None:
    assert headline_metrics({"final": {"loss": 1, "accuracy": 0.75}, "accuracy": 0.5}) == {
        "accuracy": 0.75, "loss": 1.0}
    # an empty `final` falls back to the top-level numbers; booleans are not metrics
    assert headline_metrics({"final": {}, "accuracy": 0.5, "ok": True}) == {"accuracy": 0.5}
    assert headline_metrics({"final": {"loss": None}}) == {}
    assert headline_metrics({"curves": {"train_loss": [[1, 2.0]]}}) == {}
    assert headline_metrics({}) == {}


def test_parse_card_without_front_matter() -> None:
    assert parse_card("# just markdown\n") == ({}, "# just markdown\n")
    assert parse_card("---\nlicense: mit\n---\n# m\n") == ({"license": "mit"}, "# m\n")
