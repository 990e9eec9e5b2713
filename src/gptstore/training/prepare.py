"""Step 1 of a run: the data loaded and encoded once, and the config resolved from it.

`prepare_run(config, catalog, base)` reads the base's tokenizer and config, decides the
task (explicit, else from `--format`, else from the training file), loads and encodes
the training file (refused with its errors listed by line), takes the validation file or
a seeded (stratified) split, and resolves every `auto` of the `TrainConfig` in one pass.
It returns a `PreparedData` value and the resolved, frozen config: everything after
this point reads them and changes neither, so the lineage records exactly what ran.

Knows no torch: models, optimisers and the loop are elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptstore.catalog.configs import context_length
from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.data import default_max_length, detect_format, get_format, load_training_data
from gptstore.data.types import EncodedExample
from gptstore.errors import InvalidRequest, NotFound
from gptstore.tasks import CLASSIFICATION, TaskName
from gptstore.training.config import AUTO, TrainConfig, auto_valid_split, resolve_auto


@dataclass(frozen=True)
class DatasetInfo:
    """A data set as the lineage records it."""

    name: str  # file name (or the training file it was split from)
    digest: str  # `sha256:<hex>` of the file's bytes
    examples: int  # examples the run used
    format: str | None = None
    truncated: int = 0  # examples cut at max_length
    split_from: str | None = None  # a held-out split of this training file ...
    fraction: float | None = None  # ... of this size

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class PreparedData:
    """The run's data, encoded with the base's tokenizer."""

    task: TaskName
    tokenizer: Any
    pad_id: int
    max_length: int
    label_names: tuple[str, ...] | None
    train: tuple[EncodedExample, ...]
    valid: tuple[EncodedExample, ...]
    train_info: DatasetInfo
    valid_info: DatasetInfo | None
    valid_fraction: float  # of the training file held out (0 with a validation file)

    @property
    def lengths(self) -> list[int]:
        return [e.num_tokens for e in self.train]


def prepare_run(config: TrainConfig, catalog: Catalog, base: VersionInfo, *, cores: int,
                fast_bf16: bool) -> tuple[PreparedData, TrainConfig]:
    """The prepared data and the resolved config (see the module docstring)."""
    data = prepare_data(config, catalog, base)
    resolved = resolve_auto(config, task=data.task, n_train=len(data.train),
                            max_length=data.max_length, valid_split=data.valid_fraction,
                            cores=cores, fast_bf16=fast_bf16)
    return data, resolved


def task_of(config: TrainConfig, path: Path) -> TaskName:
    """The task to train: as given; else the one `--format` trains; else the file's."""
    if config.task != AUTO:
        return config.task  # type: ignore[return-value]
    if config.format is not None:
        return get_format(config.format).task
    fmt, _ = detect_format(path)
    return fmt.task if fmt is not None else "causal-lm"


def prepare_data(config: TrainConfig, catalog: Catalog, base: VersionInfo) -> PreparedData:
    """Load, check and encode the training (and validation) data for `base`."""
    from transformers import AutoConfig

    from gptstore.inference.loader import load_tokenizer

    path = Path(config.train_file)
    if not path.is_file():
        raise NotFound(f"training file not found: {path}", param="train_file")
    task = task_of(config, path)
    if task == CLASSIFICATION and config.format is None:
        fmt, _ = detect_format(path, task)
        if fmt is not None and fmt.task != task:
            raise InvalidRequest(
                f"{path.name}: classification needs a label on every example, and this "
                f"file reads as {fmt.name} data without labels; give lines like "
                '{"text": "...", "label": "..."} (or a CSV / TSV with text and label '
                "columns), or train with --task causal-lm", param="train_file")
    base_config = AutoConfig.from_pretrained(catalog.snapshot(base))
    tokenizer = load_tokenizer(catalog, base)
    if tokenizer.pad_token_id is None:  # pad with eos: masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    limit = context_length(base_config)
    if config.max_length == AUTO:
        max_length = default_max_length(tokenizer)
        if limit is not None:
            max_length = min(max_length, limit)
    else:
        max_length = int(config.max_length)
        if limit is not None and max_length > limit:
            raise InvalidRequest(f"max_length {max_length} is longer than the base model "
                                 f"supports ({limit} positions); use --max-length {limit} "
                                 "or less", param="max_length")
    train = load_training_data(path, task, tokenizer, max_length, format=config.format)
    train_examples: list[EncodedExample] = train.examples
    if config.valid_file:
        valid = load_training_data(config.valid_file, task, tokenizer, max_length,
                                   label_names=train.label_names)
        valid_examples = valid.examples
        valid_info: DatasetInfo | None = DatasetInfo(
            name=Path(config.valid_file).name, digest=valid.digest,
            examples=len(valid.examples), format=valid.format, truncated=valid.truncated)
        fraction = 0.0
    else:
        fraction = auto_valid_split(len(train.examples)) if config.valid_split == AUTO \
            else float(config.valid_split)
        train_examples, valid_examples = split_examples(
            train.examples, fraction, seed=config.seed, stratify=task == CLASSIFICATION)
        valid_info = DatasetInfo(name=path.name, digest=train.digest,
                                 examples=len(valid_examples), split_from=path.name,
                                 fraction=round(fraction, 4)) if valid_examples else None
    if not train_examples:
        raise InvalidRequest(f"{path.name}: no training example is left after the "
                             "validation split; add examples or give --valid",
                             param="train_file")
    return PreparedData(
        task=task, tokenizer=tokenizer, pad_id=int(tokenizer.pad_token_id),
        max_length=max_length,
        label_names=tuple(train.label_names) if train.label_names is not None else None,
        train=tuple(train_examples), valid=tuple(valid_examples),
        train_info=DatasetInfo(name=path.name, digest=train.digest,
                               examples=len(train_examples), format=train.format,
                               truncated=train.truncated),
        valid_info=valid_info, valid_fraction=fraction)


def split_examples(examples: Sequence[EncodedExample], fraction: float, *, seed: int,
                   stratify: bool) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """Hold out `fraction` of the examples (seeded); per class when `stratify`, so every
    label keeps training examples."""
    if fraction <= 0:
        return list(examples), []
    rng = np.random.default_rng([seed, 1])
    groups: dict[int | None, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.label if stratify else None, []).append(index)
    held: set[int] = set()
    for members in groups.values():
        take = min(len(members) - 1, round(fraction * len(members)))
        held.update(rng.permutation(members)[:max(0, take)].tolist())
    if not held and len(examples) > 1:
        held.add(int(rng.integers(len(examples))))
    train = [e for i, e in enumerate(examples) if i not in held]
    valid = [e for i, e in enumerate(examples) if i in held]
    return train, valid
