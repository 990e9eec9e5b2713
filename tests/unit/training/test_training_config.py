"""TrainConfig: checks that name the field and the fix, and the `auto` rules."""

from __future__ import annotations

import pytest

from gptstore.errors import InvalidRequest
from gptstore.training import TrainConfig, field_help
from gptstore.training.config import (
    auto_batch_size,
    auto_epochs,
    auto_valid_split,
    resolve_auto,
    steps_per_epoch,
)

BASE = {"base": "acme/base", "train_file": "train.jsonl", "name": "acme/new"}


def make(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, **kw})


@pytest.mark.parametrize(("field", "value", "words"), [
    ("learning_rate", 0, "> 0"),
    ("learning_rate", -1e-4, "> 0"),
    ("batch_size", 0, ">= 1"),
    ("epochs", 0, ">= 1"),
    ("max_length", 1, ">= 2"),
    ("grad_accum_steps", 0, ">= 1"),
    ("lora_r", 0, ">= 1"),
    ("dropout", 1.0, "[0, 1)"),
    ("lora_dropout", -0.1, "[0, 1)"),
    ("valid_split", 1.5, "fraction"),
    ("weight_decay", -1, ">= 0"),
    ("method", "qlora", "lora, full, head"),
    ("task", "translation", "causal-lm"),
    ("optimizer", "adam", "adamw, sgd"),
    ("schedule", "step", "linear, cosine"),
    ("name", "no-namespace", "namespace/name"),
    ("name", "acme/x@2", "version"),
    ("base", "", "required"),
    ("batch_size", True, ">= 1"),
])
def test_bad_values_name_the_field_and_the_fix(field, value, words):
    with pytest.raises(InvalidRequest) as info:
        make(**{field: value})
    assert info.value.param == field
    assert field in info.value.message and words in info.value.message


def test_defaults_and_parsing():
    cfg = make(lora_target="q_proj, v_proj")
    assert cfg.lora_target == ["q_proj", "v_proj"]
    assert cfg.method == "lora" and cfg.optimizer == "adamw" and cfg.seed == 0
    assert {"epochs", "learning_rate", "batch_size", "task"} <= set(cfg.auto_fields)
    assert make(learning_rate=3e-4).learning_rate == 3e-4
    assert "learning rate" in field_help("learning_rate").lower()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InvalidRequest, match="unknown training option") as info:
        TrainConfig.from_dict({**BASE, "lr": 1})
    assert info.value.param == "lr"


def test_auto_epochs_follow_openai():
    assert auto_epochs(10) == 10  # 100 example passes at least
    assert auto_epochs(3) == 25  # capped
    assert auto_epochs(500) == 3
    assert auto_epochs(20_000) == 1  # 25 000 passes at most
    assert auto_epochs(6920) == 3


def test_auto_batch_and_split():
    assert auto_batch_size(500) == 8 and auto_batch_size(5000) == 16
    # small files: halved until the run makes 100 optimiser steps
    assert auto_batch_size(5, epochs=20) == 1  # 5 steps an epoch at batch 1
    assert auto_batch_size(36, epochs=3) == 1  # 2: 18 x 3 = 54 steps; 1: 108
    assert auto_batch_size(200, epochs=3) == 4  # 8: 25 x 3 = 75; 4: 50 x 3 = 150
    assert auto_batch_size(360, epochs=3) == 8  # 45 x 3 = 135
    assert auto_batch_size(200, epochs=3, grad_accum_steps=2) == 2  # 100 x 3 / 2
    assert auto_valid_split(5) == 0.0
    assert auto_valid_split(100) == 0.1
    assert auto_valid_split(50_000) == pytest.approx(0.02)


def test_resolve_auto_fills_every_auto_value_once():
    cfg = make(method="lora")
    resolved = resolve_auto(cfg, task="classification", n_train=2000, max_length=512,
                            valid_split=0.1, cores=2,
                            fast_bf16=False)
    assert resolved.task == "classification" and resolved.epochs == 3
    assert resolved.batch_size == 16 and resolved.learning_rate == 5e-4
    assert resolved.lora_alpha == 16 and resolved.dropout == 0.0
    assert resolved.metric == "accuracy" and resolved.max_length == 512
    assert resolved.valid_split == 0.1 and resolved.lora_target == ["all-linear"]
    assert resolved.precision == "fp32" and resolved.shards == 2
    # 2000 / 16 -> 125 steps an epoch, 375 in all: every 38 steps is about 10 times a run
    assert resolved.eval_every == 38 and resolved.save_every == 38
    assert resolved.auto_fields == []  # nothing is left to resolve later
    assert make(method="full").auto_fields == cfg.auto_fields
    full = resolve_auto(make(method="full"), task="causal-lm", n_train=50, max_length=64,
                        fast_bf16=True, cores=2)
    assert full.learning_rate == 2e-5 and full.dropout == 0.1 and full.metric == "loss"
    assert full.epochs == 3 and full.batch_size == 1 and full.precision == "bf16"
    assert full.lora_target == ["all-linear"]  # causal-lm: every projection
    assert full.shards == 1  # dropout draws random numbers: one pass, no worker threads


def test_a_resolved_config_cannot_change():
    import dataclasses

    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shards = 2  # type: ignore[misc]


def test_explicit_shards_with_dropout_is_refused():
    with pytest.raises(InvalidRequest, match="shards > 1") as info:
        resolve_auto(make(method="full", shards=2), task="causal-lm", n_train=50,
                     max_length=64)
    assert info.value.param == "shards"


def test_metric_must_fit_the_task():
    with pytest.raises(InvalidRequest, match="token_accuracy") as info:
        resolve_auto(make(metric="token_accuracy"), task="classification", n_train=100,
                     max_length=64)
    assert info.value.param == "metric"
    with pytest.raises(InvalidRequest, match="classification"):
        resolve_auto(make(metric="accuracy"), task="causal-lm", n_train=100, max_length=64)


def test_steps_per_epoch_counts_a_last_partial_window():
    assert steps_per_epoch(10, 1) == 10
    assert steps_per_epoch(10, 3) == 4
