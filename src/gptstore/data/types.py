"""Shapes shared by the data formats and the training loop (the contract between them).

A format module parses a file into `Record`s; encoding turns records into
`EncodedExample`s with the base model's tokenizer; the training loop only ever sees
`TrainingData`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptstore.tasks import TASKS, TaskName

__all__ = ["IGNORE_INDEX", "TASKS", "EncodedExample", "TaskName", "TrainingData"]

#: label id that means "no loss on this token" (the transformers / PyTorch convention)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    """One tokenised training example.

    causal-lm: `labels` has the same length as `input_ids`; `labels[i]` is the target
    for position i *before* the shift (transformers convention: the model shifts), and
    IGNORE_INDEX where no loss is taken (prompt, system and user turns).
    classification: `label` is the index into `TrainingData.label_names`.
    """

    input_ids: list[int]
    labels: list[int] | None = None
    label: int | None = None
    #: 1-based line (or CSV row) of the source file, for error messages
    line: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class TrainingData:
    """A whole training (or validation) file, parsed, checked and tokenised."""

    path: str
    format: str
    task: TaskName
    examples: list[EncodedExample]
    #: `sha256:<hex>` of the file's bytes, recorded in the lineage
    digest: str
    #: classification only: the label set, index = class id
    label_names: list[str] | None = None
    #: how many examples were cut at max_length
    truncated: int = 0
    extra: dict[str, object] = field(default_factory=dict)
