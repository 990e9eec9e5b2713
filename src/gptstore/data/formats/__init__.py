"""The registry of training-file formats, and format detection.

Each format is a small `DataFormat` class in its own module; this module lists them,
looks one up by name (`get_format`) and picks one for a file (`detect_format`): the
extension decides when it alone is unambiguous (`.txt` -> text, `.csv`/`.tsv` ->
classification), otherwise the keys of the first JSON object in the file do, in the
order chat (`messages`), prompt-completion (`prompt`/`completion`), classification
(`label`), text (`text`). A task narrows the candidates, so `{"text", "label"}` lines
are a classification file for classification and a text file for causal-lm.
"""

from __future__ import annotations

from pathlib import Path

from gptstore.data.formats.base import (
    JSONL_SUFFIXES,
    DataFormat,
    Issue,
    Record,
    error,
    first_json_object,
)
from gptstore.data.formats.chat import ChatFormat
from gptstore.data.formats.classification import ClassificationFormat, looks_delimited
from gptstore.data.formats.prompt_completion import PromptCompletionFormat
from gptstore.data.formats.text import TextFormat
from gptstore.data.types import TaskName
from gptstore.errors import InvalidRequest

#: every format, in detection order
FORMATS: dict[str, DataFormat] = {
    f.name: f
    for f in (ChatFormat(), PromptCompletionFormat(), ClassificationFormat(), TextFormat())
}


def format_names() -> list[str]:
    return list(FORMATS)


def get_format(name: str) -> DataFormat:
    """The format registered as `name`; InvalidRequest naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidRequest(f"unknown data format {name!r}; use one of "
                             f"{', '.join(FORMATS)}", param="format") from None


def detect_format(
    path: Path, task: TaskName | None = None
) -> tuple[DataFormat | None, Issue | None]:
    """The format of the file at `path`, or None and an `unknown_format` error saying why."""
    path = Path(path)
    suffix = path.suffix.lower()
    for fmt in FORMATS.values():  # an extension that names a format wins, whatever the task
        if suffix in fmt.suffixes:
            return fmt, None
    fitting = [f for f in FORMATS.values() if task is None or f.task == task]
    first = first_json_object(path)
    if first is not None:
        # prefer a format of the requested task; else report the mismatch later
        for fmt in [*fitting, *FORMATS.values()]:
            if fmt.sniff(first):
                return fmt, None
        keys = ", ".join(sorted(first)) or "none"
        wanted = "; ".join(f"{f.name}: {f.description}" for f in fitting)
        return None, error("unknown_format", f"cannot tell the format from the first "
                           f"object's keys ({keys}); expected {wanted}")
    if suffix not in JSONL_SUFFIXES:
        if looks_delimited(path):
            return FORMATS["classification"], None
        return FORMATS["text"], None
    return None, error("unknown_format", "no line of the file is a JSON object, so its "
                       "format is unknown; write one JSON object per line, or pass the "
                       "format explicitly")


__all__ = [
    "FORMATS",
    "DataFormat",
    "Issue",
    "Record",
    "detect_format",
    "format_names",
    "get_format",
]
