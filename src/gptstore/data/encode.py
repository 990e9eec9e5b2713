"""From a training file on disk to `TrainingData`: resolve the format, parse, check, encode.

Owns the file-level pipeline shared by training (`load_training_data`, which refuses a
file with errors) and the validation report (`parse_file` + `encode_parsed`, which
collect everything and refuse nothing): the digest, the format/task decision, the
duplicate check, and the error message that lists problems by line. Format details live
in `data/formats/`; the report's numbers in `data/report.py`. Tokenizers only, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptstore.data.formats import FORMATS, detect_format, get_format
from gptstore.data.formats.base import DataFormat, EncodeResult, Issue, Record, error, warning
from gptstore.data.types import TASKS, TaskName, TrainingData
from gptstore.errors import InvalidRequest, NotFound
from gptstore.storage.blobs import file_sha256

#: the max_length used when neither the caller nor a small model context says otherwise
DEFAULT_MAX_LENGTH = 1024
#: how many problems an error message lists before "... and N more"
MAX_LISTED_ERRORS = 20


@dataclass
class ParsedFile:
    """A training file read and checked, before tokenisation."""

    path: Path
    digest: str
    format: DataFormat | None
    task: TaskName | None
    records: list[Record] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    duplicates: int = 0

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.is_error]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if not i.is_error]


def default_max_length(tokenizer: Any | None) -> int:
    """`DEFAULT_MAX_LENGTH`, capped by the tokenizer's context length when it has a real one
    (transformers uses a huge sentinel for "unknown")."""
    context = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(context, int) and 0 < context < 10**7:
        return min(context, DEFAULT_MAX_LENGTH)
    return DEFAULT_MAX_LENGTH


def parse_file(
    path: str | Path,
    *,
    task: TaskName | None = None,
    format: str | None = None,
    label_names: Sequence[str] | None = None,
) -> ParsedFile:
    """Read and check a training file; every problem is collected, none is raised.

    Raises only for a caller's mistake: NotFound (no such file), InvalidRequest (a
    directory, an unknown task or format name).
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"training file not found: {path}", param="file")
    if not path.is_file():
        raise InvalidRequest(f"{path} is not a file; give the path of a training file",
                             param="file")
    if task is not None and task not in TASKS:
        raise InvalidRequest(f"unknown task {task!r}; use one of {', '.join(TASKS)}",
                             param="task")
    parsed = ParsedFile(path=path, digest=file_sha256(path), format=None, task=task)
    # 1. which format: explicit, or from the extension and first record
    if format is not None:
        fmt: DataFormat | None = get_format(format)
    else:
        fmt, problem = detect_format(path, task)
        if problem is not None:
            blank = not path.read_bytes().strip()
            parsed.issues.append(error("empty_file", "the file is empty; add training "
                                       "examples") if blank else problem)
    if fmt is None:
        return parsed
    parsed.format = fmt
    parsed.task = task or fmt.task
    if fmt.task != parsed.task:
        parsed.issues.append(error("wrong_task", f"a {fmt.name} file trains {fmt.task}, not "
                                   f"{parsed.task}; {_task_hint(parsed.task)}"))
    # 2. line by line, then the whole data set
    records, issues = fmt.parse(path)
    parsed.records = records
    parsed.issues += issues
    parsed.issues += fmt.check(records, label_names=label_names)
    # 3. the same example twice is not an error, but it weighs double
    first_line: dict[str, int] = {}
    for record in records:
        seen = first_line.setdefault(record.key(), record.line)
        if seen != record.line:
            parsed.duplicates += 1
            parsed.issues.append(warning("duplicate", f"same example as line {seen}; it "
                                         "will weigh twice, remove one copy", record.line))
    parsed.issues.sort(key=lambda i: (i.line or 0, not i.is_error))
    return parsed


def _task_hint(task: TaskName) -> str:
    formats = ", ".join(f.name for f in FORMATS.values() if f.task == task)
    return f"for {task} give a file in one of the formats {formats}"


def encode_parsed(
    parsed: ParsedFile,
    tokenizer: Any,
    max_length: int,
    *,
    label_names: Sequence[str] | None = None,
) -> EncodeResult:
    """Tokenise the valid records of a parsed file; adds a `truncated` warning per cut."""
    if max_length < 2:
        raise InvalidRequest(f"max_length must be at least 2, got {max_length}",
                             param="max_length")
    if parsed.format is None:
        return EncodeResult()
    result = parsed.format.encode(parsed.records, tokenizer, max_length,
                                  label_names=label_names)
    for line, size in result.truncated:
        result.issues.append(warning("truncated", f"the example has {size} tokens and is cut "
                                     f"to max_length={max_length}; its end is not trained",
                                     line))
    return result


def load_training_data(
    path: str | Path,
    task: TaskName,
    tokenizer: Any,
    max_length: int,
    *,
    format: str | None = None,
    label_names: Sequence[str] | None = None,
) -> TrainingData:
    """Parse, check and tokenise a training or validation file for `task`.

    Raises InvalidRequest listing the errors by line when the file has any: training
    refuses such a file. Pass the training file's `label_names` when loading its
    validation file, so both share class ids (an unseen label is an error).
    """
    parsed = parse_file(path, task=task, format=format, label_names=label_names)
    _refuse_if_errors(parsed.path, parsed.errors)
    assert parsed.format is not None and parsed.task is not None
    result = encode_parsed(parsed, tokenizer, max_length, label_names=label_names)
    _refuse_if_errors(parsed.path, [i for i in result.issues if i.is_error])
    if not result.examples:
        raise InvalidRequest(f"{parsed.path.name}: no example is left to train on after "
                             f"encoding at max_length={max_length}; shorten the prompts or "
                             "raise max_length", param="file")
    warnings = parsed.warnings + [i for i in result.issues if not i.is_error]
    return TrainingData(
        path=str(parsed.path),
        format=parsed.format.name,
        task=parsed.task,
        examples=result.examples,
        digest=parsed.digest,
        label_names=result.label_names,
        truncated=len(result.truncated),
        extra={
            "records": len(parsed.records),
            "duplicates": parsed.duplicates,
            "skipped": sum(i.rule == "no_loss_after_truncation" for i in warnings),
            "warnings": [i.to_dict() for i in warnings],
        },
    )


def describe_errors(path: Path, errors: Sequence[Issue]) -> str:
    """The message training shows for a refused file: the first errors, then a count."""
    listed = "\n".join(f"  {issue}" for issue in errors[:MAX_LISTED_ERRORS])
    more = len(errors) - MAX_LISTED_ERRORS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    noun = "error" if len(errors) == 1 else "errors"
    return (f"{path.name}: training refuses this file, it has {len(errors)} {noun}:\n"
            f"{listed}{tail}\nFix them (`gptstore data validate {path.name}` shows them "
            "all) and try again.")


def _refuse_if_errors(path: Path, errors: Sequence[Issue]) -> None:
    if errors:
        raise InvalidRequest(describe_errors(path, errors), param="file")
