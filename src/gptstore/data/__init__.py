"""Training data: file formats, validation report, tokenisation (batching: data/batching.py).

Public entry points:

- `load_training_data(path, task, tokenizer, max_length, *, format, label_names)` ->
  `TrainingData`, raising `InvalidRequest` (errors listed by line) for a bad file;
- `validate_file(path, *, task, format, tokenizer, max_length, tokens_per_second,
  epochs)` -> `ValidationReport`, which never refuses a file;
- `get_format(name)` / `detect_format(path, task)` / `FORMATS`, the format registry.

No torch is imported by this package: it works with tokenizers only.
"""

from __future__ import annotations

from gptstore.data.encode import (
    DEFAULT_MAX_LENGTH,
    ParsedFile,
    default_max_length,
    encode_parsed,
    load_training_data,
    parse_file,
)
from gptstore.data.formats import FORMATS, detect_format, format_names, get_format
from gptstore.data.formats.base import DataFormat, Issue
from gptstore.data.report import (
    CPU_LORA_TOKENS_PER_SECOND,
    TokenStats,
    ValidationReport,
    validate_file,
)
from gptstore.data.types import IGNORE_INDEX, TASKS, EncodedExample, TaskName, TrainingData

__all__ = [
    "CPU_LORA_TOKENS_PER_SECOND",
    "DEFAULT_MAX_LENGTH",
    "FORMATS",
    "IGNORE_INDEX",
    "TASKS",
    "DataFormat",
    "EncodedExample",
    "Issue",
    "ParsedFile",
    "TaskName",
    "TokenStats",
    "TrainingData",
    "ValidationReport",
    "default_max_length",
    "detect_format",
    "encode_parsed",
    "format_names",
    "get_format",
    "load_training_data",
    "parse_file",
    "validate_file",
]
