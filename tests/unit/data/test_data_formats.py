"""Parsing, format detection and every validation rule (with its line number)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptstore.data import FORMATS, get_format, parse_file
from gptstore.data.formats.base import (
    ChatRecord,
    ClassificationRecord,
    Message,
    PromptCompletionRecord,
    TextRecord,
)
from gptstore.data.formats.classification import label_set
from gptstore.errors import InvalidRequest, NotFound

CHAT_OK = {"messages": [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"}]}


def write(tmp_path: Path, name: str, lines: list[object] | str) -> Path:
    """Write a file: a str as is, a list one item per line (dicts as JSON)."""
    path = tmp_path / name
    if isinstance(lines, str):
        path.write_text(lines, encoding="utf-8")
    else:
        path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n"
                                for x in lines), encoding="utf-8")
    return path


def found(parsed: object) -> list[tuple[int | None, str]]:
    return [(i.line, i.rule) for i in parsed.issues]  # type: ignore[attr-defined]


# -------------------------------------------------------------------- every format


def test_chat_parses_messages_weights_and_text_parts(tmp_path: Path) -> None:
    path = write(tmp_path, "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                   {"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": "Hello", "weight": 0},
                      {"role": "user", "content": "Again"},
                      {"role": "assistant", "content": "Hello again", "weight": 1}]},
    ])
    parsed = parse_file(path)
    assert parsed.format is FORMATS["chat"] and parsed.task == "causal-lm"
    assert parsed.issues == []
    (record,) = parsed.records
    assert isinstance(record, ChatRecord) and record.line == 1
    assert record.messages[1] == Message("user", "Hi there")
    assert [m.trained for m in record.messages] == [False, False, False, False, True]


def test_prompt_completion_parses_and_allows_empty_prompt(tmp_path: Path) -> None:
    path = write(tmp_path, "pc.jsonl", [{"prompt": "2+2=", "completion": " 4"},
                                        {"prompt": "", "completion": "Once upon a time"}])
    parsed = parse_file(path)
    assert parsed.format is FORMATS["prompt-completion"] and parsed.issues == []
    assert parsed.records == [PromptCompletionRecord(1, "2+2=", " 4"),
                              PromptCompletionRecord(2, "", "Once upon a time")]


def test_text_parses_txt_as_one_document_and_jsonl_per_line(tmp_path: Path) -> None:
    txt = write(tmp_path, "book.txt", "First line.\n\nSecond paragraph.\n")
    parsed = parse_file(txt)
    assert parsed.format is FORMATS["text"]
    assert parsed.records == [TextRecord(1, "First line.\n\nSecond paragraph.\n", raw=True)]
    jsonl = write(tmp_path, "docs.jsonl", [{"text": "one"}, "", {"text": "two"}])
    assert parse_file(jsonl).records == [TextRecord(1, "one"), TextRecord(3, "two")]


@pytest.mark.parametrize(("name", "content"), [
    ("cls.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'),
    ("cls.csv", 'text,label\n"good, really",pos\nbad,neg\n'),
    ("cls.tsv", 'sentence\tlabel\tid\n"good" film\tpos\t1\nbad\tneg\t2\n'),
])
def test_classification_parses_jsonl_csv_tsv(tmp_path: Path, name: str, content: str) -> None:
    parsed = parse_file(write(tmp_path, name, content))
    assert parsed.format is FORMATS["classification"] and parsed.task == "classification"
    assert parsed.issues == []
    texts = [r.text for r in parsed.records if isinstance(r, ClassificationRecord)]
    assert texts == [{"cls.jsonl": "good", "cls.csv": "good, really",
                      "cls.tsv": '"good" film'}[name], "bad"]
    assert [r.line for r in parsed.records] == ([1, 2] if name == "cls.jsonl" else [2, 3])
    assert [r.label for r in parsed.records] == ["pos", "neg"]  # type: ignore[union-attr]


def test_int_labels_become_strings_and_sort_numerically(tmp_path: Path) -> None:
    path = write(tmp_path, "cls.jsonl", [{"text": f"t{n}", "label": n} for n in (10, 2, 1, 2)])
    records = parse_file(path).records
    assert [r.label for r in records] == ["10", "2", "1", "2"]  # type: ignore[union-attr]
    assert label_set(records) == ["1", "2", "10"]  # type: ignore[arg-type]


def test_string_labels_sort_alphabetically() -> None:
    rows = [ClassificationRecord(i, "t", label) for i, label in
            enumerate(["positive", "negative", "neutral", "10", "9"])]
    assert label_set(rows) == ["10", "9", "negative", "neutral", "positive"]


def test_csv_row_line_is_its_first_physical_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cls.csv", 'text,label\n"two\nlines",a\n\nlast,b\n,a\n')
    parsed = parse_file(path)
    assert [r.line for r in parsed.records] == [2, 5]
    assert found(parsed) == [(6, "empty_text")]


# -------------------------------------------------------------------- detection


@pytest.mark.parametrize(("name", "content", "task", "expected"), [
    ("a.jsonl", json.dumps(CHAT_OK), None, "chat"),
    ("a.jsonl", '{"prompt": "p", "completion": "c"}', None, "prompt-completion"),
    ("a.jsonl", '{"text": "t", "label": 1}', None, "classification"),
    ("a.jsonl", '{"text": "t", "label": 1}', "causal-lm", "text"),
    ("a.jsonl", '{"text": "t"}', None, "text"),
    ("a.jsonl", 'garbage\n{"text": "t"}', None, "text"),  # first *valid* record decides
    ("a.txt", '{"messages": []}', None, "text"),  # the extension wins
    ("a.csv", "text,label\nx,1\n", None, "classification"),
    ("a.tsv", "text\tlabel\nx\t1\n", None, "classification"),
    ("a.data", json.dumps(CHAT_OK), None, "chat"),
    ("a.data", "text\tlabel\nx\t1\n", None, "classification"),
    ("a", "just some prose\n", None, "text"),
])
def test_detection(tmp_path: Path, name: str, content: str, task: str | None,
                   expected: str) -> None:
    parsed = parse_file(write(tmp_path, name, content), task=task)  # type: ignore[arg-type]
    assert parsed.format is not None and parsed.format.name == expected


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", [{"text": "hello", "label": "x"}])
    parsed = parse_file(path, format="text")
    assert parsed.format is FORMATS["text"] and parsed.records == [TextRecord(1, "hello")]


def test_unknown_names_and_missing_files_raise(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", [CHAT_OK])
    with pytest.raises(InvalidRequest, match="unknown data format 'yaml'"):
        parse_file(path, format="yaml")
    with pytest.raises(InvalidRequest, match="unknown task"):
        parse_file(path, task="translation")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        parse_file(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidRequest, match="not a file"):
        parse_file(tmp_path)
    assert get_format("chat").name == "chat"


# ------------------------------------------------------------------ every rule

M = "messages"
U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}

RULES = [
    # (file name, the bad line placed on line 3 after two good ones, expected rule)
    ("chat.jsonl", "{not json", "invalid_json"),
    ("chat.jsonl", "[1, 2]", "not_object"),
    ("chat.jsonl", {"conversation": []}, "missing_key"),
    ("chat.jsonl", {M: "hello"}, "wrong_type"),
    ("chat.jsonl", {M: []}, "no_messages"),
    ("chat.jsonl", {M: [U, "assistant: hi"]}, "wrong_type"),
    ("chat.jsonl", {M: [U, {"content": "x"}]}, "missing_key"),
    ("chat.jsonl", {M: [{"role": "tool", "content": "x"}, A]}, "unknown_role"),
    ("chat.jsonl", {M: [U, {"role": "assistant"}]}, "missing_key"),
    ("chat.jsonl", {M: [U, {"role": "assistant", "content": 42}]}, "wrong_type"),
    ("chat.jsonl", {M: [U, {"role": "assistant", "content": "  "}]}, "empty_content"),
    ("chat.jsonl", {M: [U, {**A, "weight": 0.5}]}, "bad_weight"),
    ("chat.jsonl", {M: [{**U, "weight": 1}, A]}, "bad_weight"),
    ("chat.jsonl", {M: [{"role": "system", "content": "s"}, U]}, "no_assistant"),
    ("chat.jsonl", {M: [U, {**A, "weight": 0}]}, "no_trained_turn"),
    ("pc.jsonl", {"completion": "c"}, "missing_key"),
    ("pc.jsonl", {"prompt": "p", "completion": ["c"]}, "wrong_type"),
    ("pc.jsonl", {"prompt": "p", "completion": ""}, "empty_content"),
    ("text.jsonl", {"body": "t"}, "missing_key"),
    ("text.jsonl", {"text": None}, "wrong_type"),
    ("text.jsonl", {"text": "\n"}, "empty_text"),
    ("cls.jsonl", {"text": "t"}, "missing_key"),
    ("cls.jsonl", {"text": "t", "label": [1]}, "unknown_label_type"),
    ("cls.jsonl", {"text": "t", "label": 0.5}, "unknown_label_type"),
    ("cls.jsonl", {"text": "t", "label": True}, "unknown_label_type"),
    ("cls.jsonl", {"text": "t", "label": None}, "unknown_label_type"),
    ("cls.jsonl", {"text": "t", "label": " "}, "empty_label"),
    ("cls.jsonl", {"text": "", "label": "a"}, "empty_text"),
    ("cls.csv", "only-one-field", "bad_row"),
    ("cls.csv", ",a", "empty_text"),
    ("cls.csv", "some text,", "empty_label"),
    ("cls.tsv", "\ta", "empty_text"),
]
GOOD = {
    "chat.jsonl": [CHAT_OK, {M: [U, {"role": "assistant", "content": "Hey"}]}],
    "pc.jsonl": [{"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": "d"}],
    "text.jsonl": [{"text": "one"}, {"text": "two"}],
    "cls.jsonl": [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}],
    "cls.csv": ["text,label", "x,a", "y,b"],
    "cls.tsv": ["text\tlabel", "x\ta", "y\tb"],
}


@pytest.mark.parametrize(("name", "bad", "rule"), RULES,
                         ids=[f"{n}-{r}-{i}" for i, (n, _, r) in enumerate(RULES)])
def test_rule_reports_its_line(tmp_path: Path, name: str, bad: object, rule: str) -> None:
    good = GOOD[name]
    lines = [*good[:-1], bad, good[-1]]  # the bad example sits between good ones
    parsed = parse_file(write(tmp_path, name, lines))
    bad_line = len(good)  # 1-based: after the header / first good line(s)
    assert found(parsed) == [(bad_line, rule)], parsed.issues
    issue = parsed.errors[0]
    assert issue.severity == "error" and issue.message
    assert len(parsed.records) == len(good) - (1 if name.endswith((".csv", ".tsv")) else 0)


def test_all_problems_of_one_line_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "chat.jsonl", [{M: [{"role": "bot", "content": ""}, A]}])
    assert found(parse_file(path)) == [(1, "unknown_role"), (1, "empty_content")]


@pytest.mark.parametrize("name", ["a.jsonl", "a.txt", "a.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    parsed = parse_file(write(tmp_path, name, "\n  \n"))
    assert found(parsed) == [(None, "empty_file")]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(json.dumps(CHAT_OK).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    assert found(parse_file(path, format="chat")) == [(2, "not_utf8")]


def test_unknown_format_lists_the_keys(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "a.jsonl", [{"question": "q", "answer": "a"}]))
    assert parsed.format is None and found(parsed) == [(None, "unknown_format")]
    assert "answer, question" in parsed.errors[0].message
    parsed = parse_file(write(tmp_path, "b.jsonl", ["nope", "still nope"]))
    assert found(parsed) == [(None, "unknown_format")]


def test_wrong_task(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "a.csv", "text,label\nx,a\ny,b\n"), task="causal-lm")
    assert parsed.format is FORMATS["classification"]
    assert found(parsed) == [(None, "wrong_task")]
    assert "chat, prompt-completion, text" in parsed.errors[0].message


def test_single_class(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "a.jsonl", [{"text": "x", "label": 1},
                                                   {"text": "y", "label": "1"}]))
    assert found(parsed) == [(None, "single_class")]
    # a validation file may hold one class of the training label set
    assert parse_file(parsed.path, label_names=["0", "1"]).issues == []


def test_csv_without_needed_columns(tmp_path: Path) -> None:
    parsed = parse_file(write(tmp_path, "a.csv", "review,stars\nx,1\n"))
    assert found(parsed) == [(1, "missing_columns")]
    assert "'text'" in parsed.errors[0].message
    parsed = parse_file(write(tmp_path, "b.tsv", "sentence\tclass\nx\t1\n"))
    assert found(parsed) == [(1, "missing_columns")]
    assert "'label'" in parsed.errors[0].message


def test_unseen_label_against_training_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "val.jsonl", [{"text": "x", "label": "pos"},
                                         {"text": "y", "label": "meh"}])
    assert found(parse_file(path, label_names=["neg", "pos"])) == [(2, "unseen_label")]


def test_duplicates_and_conflicting_labels_are_warnings(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"},
                                       {"text": "x", "label": "a"}, {"text": "x", "label": "b"}])
    parsed = parse_file(path)
    assert parsed.errors == [] and parsed.duplicates == 1
    assert [(i.line, i.rule, i.severity) for i in parsed.warnings] == [
        (3, "duplicate", "warning"), (4, "conflicting_labels", "warning")]
    assert "line 1" in parsed.warnings[0].message
