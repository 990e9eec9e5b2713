"""Bad input to fine-tuning: a clear message naming the field or line and the fix, and
no model published."""

from __future__ import annotations

import json

import pytest

from gptstore.errors import Conflict, GptStoreError, InvalidRequest, NotFound, StorageError
from gptstore.training import TrainConfig, finetune


def _refused(store, config: TrainConfig, error: type[GptStoreError], match: str) -> GptStoreError:
    settings, catalog = store
    with pytest.raises(error, match=match) as info:
        finetune(config, settings=settings, catalog=catalog)
    assert not catalog.exists(config.name)
    return info.value


def test_a_file_with_errors_is_refused_by_line(store, config_for, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good movie", "label": "positive"}\n{"text": "oops"\n'
                   '{"text": "bad movie", "label": "negative"}\n{"label": "negative"}\n')
    error = _refused(store, config_for("classification", "lora", "llama", "acme/bad",
                                       train_file=str(bad)), InvalidRequest, "line 2")
    assert "line 4" in error.message and "gptstore data validate" in error.message
    assert error.param == "file"


def test_an_empty_file_is_refused(store, config_for, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _refused(store, config_for("causal-lm", "lora", "llama", "acme/empty",
                               train_file=str(empty)), InvalidRequest, "empty")


def test_a_single_class_is_refused(store, config_for, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"text {i}", "label": "positive"}) + "\n"
                           for i in range(20)))
    _refused(store, config_for("classification", "lora", "llama", "acme/one-class",
                               train_file=str(one)), InvalidRequest, "one")


def test_classification_on_a_file_without_labels(store, config_for, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"some text {i}"}) + "\n" for i in range(20)))
    _refused(store, config_for("classification", "lora", "llama", "acme/no-labels",
                               train_file=str(texts)), InvalidRequest, "label")


def test_a_missing_base_model(store, config_for):
    error = _refused(store, config_for("classification", "lora", "llama", "acme/no-base",
                                       base="acme/nope"), NotFound, "acme/nope")
    assert error.param == "base"


def test_a_missing_training_file(store, config_for, tmp_path):
    error = _refused(store, config_for("classification", "lora", "llama", "acme/no-file",
                                       train_file=str(tmp_path / "nope.jsonl")), NotFound,
                     "not found")
    assert error.param == "train_file"


def test_a_context_longer_than_the_base_supports(store, config_for):
    error = _refused(store, config_for("classification", "lora", "llama", "acme/too-long",
                                       max_length=100_000), InvalidRequest, "256 positions")
    assert error.param == "max_length"


def test_a_run_directory_that_is_not_writable(store, config_for, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    error = _refused(store, config_for("classification", "lora", "llama", "acme/no-run-dir",
                                       run_dir=str(blocker / "run")), StorageError,
                     "not writable")
    assert error.param == "run_dir"


def test_a_name_that_is_taken(store, config_for):
    settings, catalog = store
    before = catalog.resolve("acme/tiny-gpt2")
    with pytest.raises(Conflict, match="already exists") as info:
        finetune(config_for("classification", "lora", "llama", "acme/tiny-gpt2"),
                 settings=settings, catalog=catalog)
    assert info.value.param == "name"
    assert catalog.resolve("acme/tiny-gpt2") == before  # no version added


def test_unknown_lora_targets_list_the_real_ones(store, config_for):
    error = _refused(store, config_for("classification", "lora", "llama", "acme/bad-target",
                                       lora_target="query,value"), InvalidRequest, "q_proj")
    assert error.param == "lora_target"
