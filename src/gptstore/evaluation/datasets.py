"""Evaluation files: what `gptstore eval --data FILE [--task T]` reads, per task.

- classification: a classification training file (JSONL `{"text", "label"}`, CSV /
  TSV): text and gold label;
- causal-lm: any causal-LM training file (`.txt`, `{"text"}`, prompt / completion,
  chat): the tokens training would score;
- qa: JSONL `{"question", "context"?, "answers": [..]}` (SQuAD's `{"text": [..]}` and
  NQ-open's `"answer"` read too): extractive with a passage, closed-book without one,
  any of several gold answers;
- translation: JSONL `{"source", "target"}` (`"references": [..]` for several);
- code: MBPP or HumanEval JSON Lines.

`detect_eval_task(path)` tells the task from the first record's keys when `--task` is
not given. Every malformed line is an `InvalidRequest` naming the file, the line and
the fix. The causal-LM case is left to the training data pipeline (`gptstore.data`),
which already knows what a file's targets are.

Knows no tokenizer and no model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptstore.errors import InvalidRequest, NotFound
from gptstore.evaluation.formats import (
    CodeProblem,
    json_lines,
    parse_humaneval_record,
    parse_mbpp_record,
    read_humaneval,
    read_mbpp,
)
from gptstore.storage.blobs import file_sha256

EvalTask = Literal["classification", "causal-lm", "qa", "translation", "code"]
EVAL_TASKS: tuple[EvalTask, ...] = ("classification", "causal-lm", "qa", "translation", "code")


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    line: int


@dataclass(frozen=True)
class QAExample:
    question: str
    answers: tuple[str, ...]
    line: int
    context: str | None = None  # None: closed-book (NQ-open style)


@dataclass(frozen=True)
class TranslationExample:
    source: str
    references: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class EvalData:
    """An evaluation file read for one task. `items` holds `LabelledText`, `QAExample`,
    `TranslationExample` or `CodeProblem` records; empty for causal-lm (the training
    pipeline encodes that file)."""

    task: EvalTask
    path: Path
    digest: str  # sha256:<hex> of the file's bytes: only like is compared with like
    items: tuple[Any, ...] = ()
    label_names: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.items)


def check_task(task: str) -> EvalTask:
    if task not in EVAL_TASKS:
        raise InvalidRequest(f"unknown task {task!r}; use one of {', '.join(EVAL_TASKS)}",
                             param="task")
    return task


def detect_eval_task(path: Path) -> EvalTask:
    """The task a file evaluates, from its extension or first record's keys."""
    path = Path(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return "classification"
    if path.suffix.lower() == ".txt":
        return "causal-lm"
    first = next((record for _, record in _json_lines(path)), None)
    if first is None:
        raise InvalidRequest(f"{path.name}: no JSON record found; give JSON Lines, or "
                             "--task causal-lm for plain text", param="data")
    if "test_list" in first or "entry_point" in first:
        return "code"
    if "question" in first:
        return "qa"
    if "source" in first:
        return "translation"
    if "label" in first:
        return "classification"
    if "text" in first or "messages" in first or "prompt" in first:
        return "causal-lm"
    raise InvalidRequest(
        f"{path.name} line 1: cannot tell the task from the keys {sorted(first)}; "
        "give --task (classification, causal-lm, qa, translation or code)", param="task")


def read_eval_data(path: str | Path, task: str | None = None) -> EvalData:
    """Read an evaluation file for `task` (detected when None)."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"evaluation file not found: {path}", param="data")
    resolved = check_task(task) if task else detect_eval_task(path)
    digest = file_sha256(path)
    if resolved == "classification":
        items, labels = _read_classification(path)
        return EvalData(resolved, path, digest, tuple(items), tuple(labels))
    if resolved == "qa":
        return EvalData(resolved, path, digest, tuple(_read_qa(path)))
    if resolved == "translation":
        return EvalData(resolved, path, digest, tuple(_read_translation(path)))
    if resolved == "code":
        return EvalData(resolved, path, digest, tuple(read_code_problems(path)))
    return EvalData(resolved, path, digest)


# ------------------------------------------------------------------ per task


def _read_classification(path: Path) -> tuple[list[LabelledText], list[str]]:
    from gptstore.data.encode import describe_errors, parse_file
    from gptstore.data.formats.base import ClassificationRecord
    from gptstore.data.formats.classification import label_set

    parsed = parse_file(path, task="classification")
    if parsed.errors:
        raise InvalidRequest(describe_errors(path, parsed.errors).replace(
            "training refuses", "evaluation refuses"), param="data")
    rows = [r for r in parsed.records if isinstance(r, ClassificationRecord)]
    return [LabelledText(r.text, r.label, r.line) for r in rows], label_set(rows)


def _read_qa(path: Path) -> list[QAExample]:
    examples = []
    for line, record in _json_lines(path):
        where = f"{path.name} line {line}"
        question = _text(record, "question", where)
        raw = record.get("answers", record.get("answer"))
        if isinstance(raw, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
            raw = raw.get("text")
        if isinstance(raw, str):
            raw = [raw]
        if (not isinstance(raw, list) or not raw
                or not all(isinstance(a, str) and a.strip() for a in raw)):
            raise InvalidRequest(f"{where}: 'answers' must be a non-empty list of answer "
                                 'strings, e.g. "answers": ["Paris"]', param="answers")
        context = record.get("context")
        if context is not None and (not isinstance(context, str) or not context.strip()):
            raise InvalidRequest(f"{where}: 'context' must be the passage as a string, or "
                                 "left out for closed-book questions", param="context")
        examples.append(QAExample(question, tuple(raw), line, context))
    return _non_empty(examples, path, "questions")


def _read_translation(path: Path) -> list[TranslationExample]:
    examples = []
    for line, record in _json_lines(path):
        where = f"{path.name} line {line}"
        source = _text(record, "source", where)
        refs = record.get("references", record.get("target"))
        if isinstance(refs, str):
            refs = [refs]
        if (not isinstance(refs, list) or not refs
                or not all(isinstance(r, str) and r.strip() for r in refs)):
            raise InvalidRequest(f"{where}: give the translation as 'target' (a string) or "
                                 "'references' (a list of strings)", param="target")
        examples.append(TranslationExample(source, tuple(refs), line))
    return _non_empty(examples, path, "sentences")


def read_code_problems(path: Path) -> list[CodeProblem]:
    """MBPP or HumanEval problems, the format told by the first record."""
    first = next((record for _, record in _json_lines(path)), {})
    if "entry_point" in first:
        return read_humaneval(path)
    return read_mbpp(path)


def code_problem_of(record: dict[str, Any], where: str) -> CodeProblem:
    """One problem from an MBPP or HumanEval record (a suite's stored line)."""
    if "entry_point" in record:
        return parse_humaneval_record(record, where)
    return parse_mbpp_record(record, where)


# ------------------------------------------------------------------ shared


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    return json_lines(path, kind="evaluation data", item="example", param="data")


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{where}: '{key}' must be a non-empty string", param=key)
    return value


def _non_empty(items: Sequence[Any], path: Path, noun: str) -> list[Any]:
    if not items:
        raise InvalidRequest(f"{path.name}: no {noun} in the file", param="data")
    return list(items)
