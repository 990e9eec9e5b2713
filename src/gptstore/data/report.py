"""The validation report: everything worth knowing about a training file before training.

Owns `ValidationReport` (JSON-ready with `to_dict`, served later by the HTTP job API and
printed by `gptstore data validate`) and `validate_file`, which never refuses a file:
errors and warnings are data here. Token counts, truncation and the training-time
estimate need a tokenizer; without one the report covers format, examples, errors,
duplicates and labels. Parsing and encoding are `data/encode.py`'s.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptstore.data.encode import default_max_length, encode_parsed, parse_file
from gptstore.data.formats.base import ClassificationRecord, Issue
from gptstore.data.formats.classification import label_set
from gptstore.data.types import TaskName

#: Reference fine-tuning throughput in trained tokens per second for LoRA (r=8 on q/v)
#: on SmolLM2-135M, fp32, on the 2-core CPU of our reference machine, for a store that
#: has not finished a fine-tune of the base yet (training/estimate.py measures it from
#: the store's own runs after that). Measured: one plain-PyTorch LoRA step over 8 x 64
#: tokens takes ~1.5 s (~340 tok/s); the Hugging Face Trainer on SST-2 with padding
#: reached ~155 tok/s. Small steps (batch 1) run far below it.
CPU_LORA_TOKENS_PER_SECOND = 300.0

#: how many errors / warnings `to_dict` lists (the counts are always complete)
MAX_LISTED = 100


@dataclass(frozen=True)
class TokenStats:
    """Token counts of the encoded examples (after chunking and truncation)."""

    min: int
    mean: float
    max: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "mean": round(self.mean, 1), "max": self.max,
                "total": self.total}


@dataclass
class ValidationReport:
    """What `validate_file` found. `ok` is False when training would refuse the file."""

    path: str
    digest: str
    format: str | None
    task: TaskName | None
    #: valid records in the file (lines, rows, documents)
    examples: int
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    duplicates: int = 0
    #: classification: label -> count, in label order
    label_distribution: dict[str, int] | None = None
    label_names: list[str] | None = None
    # the rest needs a tokenizer
    tokenizer: str | None = None
    max_length: int | None = None
    #: examples training would see (text is chunked; skipped ones are gone)
    training_examples: int | None = None
    tokens: TokenStats | None = None
    truncated: int | None = None
    # the estimate needs a throughput
    tokens_per_second: float | None = None
    epochs: int | None = None
    estimated_training_seconds: float | None = None
    #: what the throughput rests on (training/estimate.py's `Throughput.basis`)
    estimate_basis: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self, max_listed: int = MAX_LISTED) -> dict[str, Any]:
        """A JSON-serialisable dict; issue lists are capped at `max_listed` each."""
        return {
            "path": self.path,
            "digest": self.digest,
            "ok": self.ok,
            "format": self.format,
            "task": self.task,
            "examples": self.examples,
            "error_count": len(self.errors),
            "warning_count": len(self.warnings),
            "errors": [i.to_dict() for i in self.errors[:max_listed]],
            "warnings": [i.to_dict() for i in self.warnings[:max_listed]],
            "duplicates": self.duplicates,
            "label_names": self.label_names,
            "label_distribution": self.label_distribution,
            "tokenizer": self.tokenizer,
            "max_length": self.max_length,
            "training_examples": self.training_examples,
            "tokens": self.tokens.to_dict() if self.tokens else None,
            "truncated": self.truncated,
            "tokens_per_second": self.tokens_per_second,
            "epochs": self.epochs,
            "estimated_training_seconds": (
                None if self.estimated_training_seconds is None
                else round(self.estimated_training_seconds, 1)
            ),
            "estimate_basis": self.estimate_basis,
        }


def validate_file(
    path: str | Path,
    *,
    task: TaskName | None = None,
    format: str | None = None,
    tokenizer: Any | None = None,
    max_length: int | None = None,
    tokens_per_second: float | None = None,
    epochs: int | None = None,
) -> ValidationReport:
    """Check a training file and measure it; problems are reported, not raised.

    With a tokenizer, examples are encoded at `max_length` (default: the tokenizer's
    context capped at 1024) for token counts and truncation. With `tokens_per_second`
    too, the training time is estimated as total tokens x epochs (default 1) / that.
    Raises only NotFound / InvalidRequest for a missing path or an unknown name.
    """
    parsed = parse_file(path, task=task, format=format)
    report = ValidationReport(
        path=str(parsed.path),
        digest=parsed.digest,
        format=parsed.format.name if parsed.format else None,
        task=parsed.task,
        examples=len(parsed.records),
        errors=parsed.errors,
        warnings=parsed.warnings,
        duplicates=parsed.duplicates,
    )
    labelled = [r for r in parsed.records if isinstance(r, ClassificationRecord)]
    if labelled:
        counts = Counter(r.label for r in labelled)
        report.label_names = label_set(labelled)
        report.label_distribution = {name: counts[name] for name in report.label_names}
    if tokenizer is None or parsed.format is None:
        return report

    report.tokenizer = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    report.max_length = max_length or default_max_length(tokenizer)
    result = encode_parsed(parsed, tokenizer, report.max_length)
    report.errors += [i for i in result.issues if i.is_error]
    report.warnings = sorted(report.warnings + [i for i in result.issues if not i.is_error],
                             key=lambda i: i.line or 0)
    report.training_examples = len(result.examples)
    report.truncated = len(result.truncated)
    sizes = [example.num_tokens for example in result.examples]
    if sizes:
        report.tokens = TokenStats(min(sizes), sum(sizes) / len(sizes), max(sizes), sum(sizes))
    if tokens_per_second and report.tokens is not None:
        report.tokens_per_second = float(tokens_per_second)
        report.epochs = epochs or 1
        report.estimated_training_seconds = (
            report.tokens.total * report.epochs / report.tokens_per_second
        )
    return report
