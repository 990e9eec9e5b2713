"""Encoding with a real tokenizer: exact loss masks, chunking, labels, refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gptstore.data import IGNORE_INDEX, TrainingData, load_training_data
from gptstore.data.formats.chat import render_plain_chat
from gptstore.errors import InvalidRequest
from gptstore.testing.tiny import tiny_tokenizer

SYSTEM = {"role": "system", "content": "Be brief."}
USER1 = {"role": "user", "content": "What is the capital of France?"}
ANSWER1 = {"role": "assistant", "content": "The capital of France is Paris."}
USER2 = {"role": "user", "content": "And of Italy?"}
ANSWER2 = {"role": "assistant", "content": "Rome."}
CONVERSATION = [SYSTEM, USER1, ANSWER1, USER2, ANSWER2]


@pytest.fixture
def tok() -> Any:
    return tiny_tokenizer()


def write_jsonl(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def trained_runs(tok: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The decoded text of each maximal run of trained positions."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(input_ids, labels, strict=True):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token  # labels are not shifted
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return [tok.decode(run) for run in runs]


# ------------------------------------------------------------------------- chat


def test_chat_trains_exactly_the_assistant_turns_and_their_end_token(
    tmp_path: Path, tok: Any
) -> None:
    path = write_jsonl(tmp_path, "chat.jsonl", [{"messages": CONVERSATION}])
    data = load_training_data(path, "causal-lm", tok, 512)
    assert isinstance(data, TrainingData) and data.format == "chat"
    (example,) = data.examples
    assert example.line == 1 and example.labels is not None
    # the whole conversation is the chat template's rendering ...
    assert tok.decode(example.input_ids) == tok.apply_chat_template(CONVERSATION, tokenize=False)
    # ... and only the answers plus <|im_end|> carry loss (not the newline after it)
    assert trained_runs(tok, example.input_ids, example.labels) == [
        "The capital of France is Paris.<|im_end|>", "Rome.<|im_end|>"]
    # the prompt before the first answer is tokenised exactly as inference will send it
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False,
                                     add_generation_prompt=True)
    first = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert example.input_ids[:first] == tok(prompt, add_special_tokens=False)["input_ids"]


def test_chat_weight_zero_turn_is_context_only(tmp_path: Path, tok: Any) -> None:
    rows = [{"messages": [USER1, {**ANSWER1, "weight": 0}, USER2, {**ANSWER2, "weight": 1}]}]
    data = load_training_data(write_jsonl(tmp_path, "c.jsonl", rows), "causal-lm", tok, 512)
    (example,) = data.examples
    assert trained_runs(tok, example.input_ids, example.labels or []) == ["Rome.<|im_end|>"]
    assert "Paris" in tok.decode(example.input_ids)


def test_chat_without_template_uses_plain_format(tmp_path: Path, tok: Any) -> None:
    tok.chat_template = None
    path = write_jsonl(tmp_path, "chat.jsonl", [{"messages": CONVERSATION}])
    (example,) = load_training_data(path, "causal-lm", tok, 512).examples
    assert tok.decode(example.input_ids) == render_plain_chat(
        CONVERSATION, eos_token="<|im_end|>")
    assert tok.decode(example.input_ids).startswith("system: Be brief.\nuser: What")
    assert trained_runs(tok, example.input_ids, example.labels or []) == [
        "The capital of France is Paris.<|im_end|>", "Rome.<|im_end|>"]
    assert render_plain_chat([USER1], eos_token="</s>", add_generation_prompt=True) == (
        "user: What is the capital of France?\nassistant: ")


def test_chat_template_that_is_not_prefix_stable_still_masks_exactly(
    tmp_path: Path, tok: Any
) -> None:
    # the header depends on the number of messages, so prefix renders are not prefixes
    tok.chat_template = "[{{ messages|length }} turns]\n" + tok.chat_template
    path = write_jsonl(tmp_path, "chat.jsonl", [{"messages": CONVERSATION}])
    (example,) = load_training_data(path, "causal-lm", tok, 512).examples
    assert tok.decode(example.input_ids).startswith("[5 turns]\n<|im_start|>system")
    assert trained_runs(tok, example.input_ids, example.labels or []) == [
        "The capital of France is Paris.<|im_end|>", "Rome.<|im_end|>"]


def test_chat_template_that_rejects_a_conversation_is_an_error(
    tmp_path: Path, tok: Any
) -> None:
    tok.chat_template = ("{% if messages[0]['role'] != 'user' %}"
                         "{{ raise_exception('must start with user') }}{% endif %}"
                         + tok.chat_template)
    rows = [{"messages": [USER1, ANSWER1]}, {"messages": [SYSTEM, USER1, ANSWER1]}]
    with pytest.raises(InvalidRequest) as info:
        load_training_data(write_jsonl(tmp_path, "c.jsonl", rows), "causal-lm", tok, 512)
    assert "line 2: [template_error]" in info.value.message
    assert "must start with user" in info.value.message


def test_chat_truncation_keeps_the_start_and_skips_examples_without_loss(
    tmp_path: Path, tok: Any
) -> None:
    rows = [{"messages": CONVERSATION[1:]}, {"messages": [USER1, ANSWER1]}]
    path = write_jsonl(tmp_path, "chat.jsonl", rows)
    full = load_training_data(path, "causal-lm", tok, 512).examples
    # a max_length that ends inside the first answer, common to both examples
    labels = full[1].labels or []
    cut = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 2
    data = load_training_data(path, "causal-lm", tok, cut)
    assert data.truncated == 2 and [e.num_tokens for e in data.examples] == [cut, cut]
    assert data.examples[1].input_ids == full[1].input_ids[:cut]
    assert data.examples[1].labels == full[1].labels[:cut]
    # so short that no answer token survives: the example is skipped, with a warning
    short = write_jsonl(tmp_path, "short.jsonl", [{"messages": [USER1, ANSWER1]},
                                                   {"messages": [USER2, ANSWER2]}])
    prompt_len = len(tok(tok.apply_chat_template([USER1], tokenize=False,
                                                 add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"])
    data = load_training_data(short, "causal-lm", tok, prompt_len)
    assert [e.line for e in data.examples] == [2] and data.extra["skipped"] == 1
    assert any(w["rule"] == "no_loss_after_truncation" and w["line"] == 1
               for w in data.extra["warnings"])  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest, match="no example is left"):
        load_training_data(short, "causal-lm", tok, 2)


# ------------------------------------------------------------ prompt/completion


def test_prompt_completion_masks_the_prompt(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path, "pc.jsonl", [
        {"prompt": "Question: who wrote Hamlet? Answer:", "completion": " William Shakespeare"}])
    (example,) = load_training_data(path, "causal-lm", tok, 512).examples
    prompt_ids = tok("Question: who wrote Hamlet? Answer:")["input_ids"]
    answer_ids = tok(" William Shakespeare", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + answer_ids + [tok.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tok.eos_token_id]
    assert trained_runs(tok, example.input_ids, example.labels) == [
        " William Shakespeare<|im_end|>"]


def test_prompt_completion_truncation(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path, "pc.jsonl", [{"prompt": "2+2=", "completion": " four " * 20}])
    data = load_training_data(path, "causal-lm", tok, 10)
    assert data.truncated == 1 and data.examples[0].num_tokens == 10


# ------------------------------------------------------------------------- text


def test_text_is_chunked_to_max_length_and_fully_trained(tmp_path: Path, tok: Any) -> None:
    text = "".join(f"Line {n}: the quick brown fox jumps over the lazy dog.\n"
                   for n in range(1, 11))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    data = load_training_data(path, "causal-lm", tok, 16)
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    sizes = [e.num_tokens for e in data.examples]
    assert len(data.examples) == -(-len(ids) // 16) > 1
    assert all(size == 16 for size in sizes[:-1]) and 1 <= sizes[-1] <= 16
    assert [t for e in data.examples for t in e.input_ids] == ids
    assert all(e.labels == e.input_ids for e in data.examples)
    assert data.truncated == 0
    # every chunk knows the file line its first token comes from
    lines = [e.line for e in data.examples]
    assert lines[0] == 1 and lines == sorted(lines) and lines[-1] == 10
    for example in data.examples[1:]:
        first_word = tok.decode(example.input_ids).split("\n")[0]
        if first_word.startswith("Line "):
            assert first_word.startswith(f"Line {example.line}:")


def test_text_jsonl_documents_are_chunked_separately(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path, "docs.jsonl", [{"text": "the quick brown fox " * 6},
                                                {"text": "Paris"}])
    data = load_training_data(path, "causal-lm", tok, 8)
    assert data.examples[-1].line == 2
    assert tok.decode(data.examples[-1].input_ids) == "Paris<|im_end|>"
    assert {e.line for e in data.examples[:-1]} == {1}


# --------------------------------------------------------------- classification


def test_classification_string_labels(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path, "cls.jsonl", [{"text": "great movie", "label": "positive"},
                                               {"text": "dull plot", "label": "negative"},
                                               {"text": "it was ok", "label": "neutral"}])
    data = load_training_data(path, "classification", tok, 64)
    assert data.label_names == ["negative", "neutral", "positive"]
    assert [e.label for e in data.examples] == [2, 0, 1]
    assert data.examples[0].input_ids == tok("great movie")["input_ids"]
    assert all(e.labels is None for e in data.examples)


@pytest.mark.parametrize(("name", "content"), [
    ("cls.csv", "text,label\nThis movie was great,1\nterrible,0\nfine,10\n"),
    ("cls.tsv", "sentence\tlabel\nThis movie was great\t1\nterrible\t0\nfine\t10\n"),
    ("cls.jsonl", '{"text": "This movie was great", "label": 1}\n{"text": "terrible", '
                  '"label": 0}\n{"text": "fine", "label": 10}\n'),
])
def test_classification_int_labels_csv_tsv_jsonl(
    tmp_path: Path, tok: Any, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    data = load_training_data(path, "classification", tok, 64)
    assert data.label_names == ["0", "1", "10"]
    assert [e.label for e in data.examples] == [1, 0, 2]
    assert tok.decode(data.examples[0].input_ids) == "This movie was great"


def test_classification_truncation_keeps_the_start(tmp_path: Path, tok: Any) -> None:
    text = "the food was good and the service was friendly " * 5
    path = write_jsonl(tmp_path, "cls.jsonl", [{"text": text, "label": "a"},
                                               {"text": "bad", "label": "b"}])
    data = load_training_data(path, "classification", tok, 8)
    assert data.truncated == 1
    assert data.examples[0].input_ids == tok(text)["input_ids"][:8]


def test_validation_file_uses_the_training_label_set(tmp_path: Path, tok: Any) -> None:
    train = write_jsonl(tmp_path, "train.jsonl", [{"text": "a", "label": "neg"},
                                                  {"text": "b", "label": "neu"},
                                                  {"text": "c", "label": "pos"}])
    names = load_training_data(train, "classification", tok, 64).label_names
    val = write_jsonl(tmp_path, "val.jsonl", [{"text": "d", "label": "pos"},
                                              {"text": "e", "label": "pos"}])
    data = load_training_data(val, "classification", tok, 64, label_names=names)
    assert data.label_names == ["neg", "neu", "pos"] and [e.label for e in data.examples] == [2, 2]
    bad = write_jsonl(tmp_path, "bad.jsonl", [{"text": "d", "label": "pos"},
                                              {"text": "e", "label": "great"}])
    with pytest.raises(InvalidRequest, match=r"line 2: \[unseen_label\] label 'great'"):
        load_training_data(bad, "classification", tok, 64, label_names=names)


# ------------------------------------------------------------------ the pipeline


def test_digest_format_and_extra(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path, "chat.jsonl", [{"messages": [USER1, ANSWER1]}] * 2)
    data = load_training_data(path, "causal-lm", tok, 512)
    assert data.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.path == str(path) and data.task == "causal-lm" and data.label_names is None
    assert data.extra["records"] == 2 and data.extra["duplicates"] == 1


def test_a_bad_file_is_refused_with_lines_and_a_count(tmp_path: Path, tok: Any) -> None:
    rows = ["{broken"] * 25 + [json.dumps({"messages": [USER1]})]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InvalidRequest) as info:
        load_training_data(path, "causal-lm", tok, 512, format="chat")
    message = info.value.message
    assert "training refuses this file, it has 26 errors" in message
    assert "line 1: [invalid_json]" in message and "line 20: [invalid_json]" in message
    assert "line 21:" not in message and "... and 6 more" in message
    assert info.value.param == "file"


def test_wrong_task_and_bad_max_length_are_refused(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path, "chat.jsonl", [{"messages": [USER1, ANSWER1]}])
    with pytest.raises(InvalidRequest, match="wrong_task"):
        load_training_data(path, "classification", tok, 512, format="chat")
    with pytest.raises(InvalidRequest, match="max_length"):
        load_training_data(path, "causal-lm", tok, 1)


def test_importing_the_data_package_does_not_import_torch() -> None:
    code = ("import sys, gptstore.data, gptstore.cli.data; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
