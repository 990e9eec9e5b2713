"""Using fine-tuned models: the one loader for every kind, classify, eval, and the merged
export that loads in plain transformers and matches adapter inference."""

from __future__ import annotations

import os

import pytest
import torch

from gptstore.errors import InvalidRequest
from gptstore.inference.loader import export_merged, load_version
from gptstore.testing.reference import classify
from gptstore.training import evaluate_file, finetune

TEXTS = ["honestly the food was great", "the plot was dull", "it was hated"]


@pytest.fixture(scope="module")
def trained(store, config_for) -> dict[str, str]:
    """One short fine-tune per (task, method) kind used below: name -> store name."""
    settings, catalog = store
    runs = {
        "cls-lora": ("classification", "lora", "llama", {"epochs": 3}),
        "cls-full": ("classification", "full", "gpt2", {"epochs": 2}),
        "cls-head": ("classification", "head", "gpt2", {"epochs": 2}),
        "lm-lora": ("causal-lm", "lora", "llama", {"epochs": 1}),
        "lm-head": ("causal-lm", "head", "gpt2", {"epochs": 1}),  # tied embeddings
    }
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, (task, method, arch, extra) in runs.items():
            finetune(config_for(task, method, arch, f"acme/use-{key}", **extra),
                     settings=settings, catalog=catalog)
    finally:
        torch.set_num_threads(before)
    return {key: f"acme/use-{key}" for key in runs}


@pytest.mark.parametrize("key", ["cls-lora", "cls-full", "cls-head"])
def test_classify_every_classifier_kind(store, trained, key):
    _, catalog = store
    loaded = load_version(catalog, trained[key])
    assert not loaded.model.training
    assert loaded.task == "classification"
    assert loaded.label_names == ["negative", "positive"]
    rows = classify(loaded, TEXTS)
    assert [r["text"] for r in rows] == TEXTS
    # the toy data's last word decides: "great" is positive; "dull" and "hated" negative
    assert [r["label"] for r in rows] == ["positive", "negative", "negative"]
    for row in rows:
        probs = row["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert row["label"] == max(probs, key=probs.get)


def test_eval_of_a_stored_model_matches_its_published_metrics(store, trained, data):
    _, catalog = store
    version = catalog.resolve(trained["cls-lora"])
    report = evaluate_file(catalog, version.ref, data["cls_valid"])
    assert report["examples"] == 24 and report["task"] == "classification"
    published = version.metrics["final"]
    assert report["metrics"]["accuracy"] == pytest.approx(published["accuracy"], abs=1 / 24)
    assert report["metrics"]["loss"] == pytest.approx(published["loss"], rel=0.05, abs=0.02)
    lm = evaluate_file(catalog, trained["lm-lora"], data["lm_valid"])
    assert set(lm["metrics"]) == {"loss", "perplexity", "token_accuracy"}


def test_classify_refuses_a_causal_lm(store, trained):
    _, catalog = store
    loaded = load_version(catalog, trained["lm-lora"])
    with pytest.raises(InvalidRequest, match="not a classifier"):
        classify(loaded, ["hello"])


@pytest.mark.parametrize("key", ["cls-lora", "cls-head", "lm-lora", "lm-head"])
def test_merged_export_loads_in_transformers_and_matches_the_adapter(store, trained, key,
                                                                     tmp_path):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    _, catalog = store
    version = catalog.resolve(trained[key])
    out = tmp_path / "merged"
    export_merged(catalog, version, out)
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o666 & ~umask)}
    classifier = version.task == "classification"
    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    merged = auto.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    adapter = load_version(catalog, version.ref, dtype=torch.float32).model
    if classifier:
        assert merged.config.architectures[0].endswith("ForSequenceClassification")
        assert merged.config.id2label == {0: "negative", 1: "positive"}
    ids = torch.tensor([tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        expected = adapter(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("key", ["cls-lora", "cls-full", "cls-head", "lm-lora", "lm-head"])
def test_the_serving_engine_runs_every_fine_tuned_kind(store, trained, key):
    """What the API serves equals what the training side's loader computes."""
    from gptstore.inference.engine import Engine
    from gptstore.inference.store import store_resolver
    from gptstore.inference.types import SamplingParams

    _, catalog = store
    name = trained[key]
    loaded = load_version(catalog, name, dtype=torch.float32)
    model, tokenizer = loaded.model, loaded.tokenizer
    engine = Engine(store_resolver(catalog, dtype="float32"))
    try:
        if loaded.is_classifier:
            served = engine.classify(name, TEXTS)
            expected = classify(loaded, TEXTS)
            for row, want in zip(served, expected, strict=True):
                assert dict(row) == pytest.approx(want["probabilities"], abs=1e-4)
        else:
            ids = tokenizer(TEXTS[0])["input_ids"]
            served = engine.generate(name, ids, SamplingParams(max_tokens=8, temperature=0))
            with torch.no_grad():
                out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8,
                                     do_sample=False,
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long))
            assert served.token_ids == out[0, len(ids):].tolist()
    finally:
        engine.shutdown()
