"""The validation report's numbers, with and without a tokenizer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gptstore.data import load_training_data, validate_file
from gptstore.errors import NotFound
from gptstore.testing.tiny import tiny_tokenizer

USER = {"role": "user", "content": "What is two plus two?"}
ANSWER = {"role": "assistant", "content": "Two plus two is four."}
LONG = {"role": "assistant", "content": "The capital of France is Paris. " * 8}


@pytest.fixture
def tok() -> Any:
    return tiny_tokenizer()


def write_jsonl(tmp_path: Path, name: str, rows: list[Any]) -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path, "chat.jsonl", [
        {"messages": [USER, ANSWER]},
        {"messages": [USER, LONG]},
        {"messages": [USER]},  # line 3: no assistant
        {"messages": [USER, ANSWER]},  # line 4: duplicate of line 1
    ])


def test_report_without_tokenizer(chat_file: Path) -> None:
    report = validate_file(chat_file)
    assert (report.format, report.task, report.examples) == ("chat", "causal-lm", 3)
    assert report.digest == "sha256:" + hashlib.sha256(chat_file.read_bytes()).hexdigest()
    assert [(i.line, i.rule) for i in report.errors] == [(3, "no_assistant")]
    assert [(i.line, i.rule) for i in report.warnings] == [(4, "duplicate")]
    assert report.duplicates == 1 and not report.ok
    assert report.tokens is None and report.truncated is None
    assert report.estimated_training_seconds is None and report.label_distribution is None


def test_report_token_counts_truncation_and_estimate(
    tmp_path: Path, chat_file: Path, tok: Any
) -> None:
    report = validate_file(chat_file, tokenizer=tok, max_length=40, tokens_per_second=100.0,
                           epochs=3)
    # the same numbers as the encoded examples of the valid lines
    valid = write_jsonl(tmp_path, "valid.jsonl", [{"messages": [USER, ANSWER]},
                                                  {"messages": [USER, LONG]},
                                                  {"messages": [USER, ANSWER]}])
    sizes = [e.num_tokens for e in load_training_data(valid, "causal-lm", tok, 40).examples]
    assert sizes[1] == 40 > sizes[0]
    assert report.training_examples == 3 and report.max_length == 40
    assert report.tokens is not None
    assert (report.tokens.min, report.tokens.max, report.tokens.total) == (
        min(sizes), max(sizes), sum(sizes))
    assert report.tokens.mean == pytest.approx(sum(sizes) / 3)
    assert report.truncated == 1
    assert [(i.line, i.rule) for i in report.warnings] == [(2, "truncated"), (4, "duplicate")]
    assert report.tokens_per_second == 100.0 and report.epochs == 3
    assert report.estimated_training_seconds == pytest.approx(sum(sizes) * 3 / 100.0)


def test_report_default_max_length_is_the_context_capped_at_1024(
    chat_file: Path, tok: Any
) -> None:
    assert validate_file(chat_file, tokenizer=tok).max_length == 1024  # "unknown" context
    tok.model_max_length = 32
    report = validate_file(chat_file, tokenizer=tok)
    assert report.max_length == 32 and report.truncated == 1
    assert report.estimated_training_seconds is None  # no throughput given


def test_report_classification_labels(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "cls.csv"
    path.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\ngood,pos\n,neg\n", encoding="utf-8")
    report = validate_file(path, tokenizer=tok)
    assert report.label_names == ["neg", "pos"]
    assert report.label_distribution == {"neg": 1, "pos": 3}
    assert report.duplicates == 1 and report.examples == 4
    assert [(i.line, i.rule) for i in report.errors] == [(6, "empty_text")]


def test_report_text_counts_chunks(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "book.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    report = validate_file(path, tokenizer=tok, max_length=16)
    assert report.examples == 1 and report.training_examples is not None
    assert report.training_examples > 1 and report.truncated == 0 and report.ok
    assert report.tokens is not None and report.tokens.max == 16


def test_to_dict_is_json_and_caps_issue_lists(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, "chat.jsonl", ["{bad"] * 5)
    report = validate_file(path, format="chat")
    data = json.loads(json.dumps(report.to_dict(max_listed=2)))
    assert data["ok"] is False and data["error_count"] == 5 and len(data["errors"]) == 2
    assert data["errors"][0] == {"rule": "invalid_json", "line": 1, "severity": "error",
                                 "message": data["errors"][0]["message"]}
    assert set(data) >= {"format", "examples", "warnings", "tokens", "truncated",
                         "label_distribution", "duplicates", "estimated_training_seconds",
                         "tokens_per_second", "digest"}


def test_unknown_format_report_and_missing_file(tmp_path: Path) -> None:
    report = validate_file(write_jsonl(tmp_path, "a.jsonl", [{"q": 1}]))
    assert report.format is None and report.examples == 0
    assert [i.rule for i in report.errors] == ["unknown_format"]
    with pytest.raises(NotFound):
        validate_file(tmp_path / "nope.jsonl")
