"""A finished run as a value: `RunRecord`.

The loop builds one record when training ends; everything that reports on the run
reads it and nothing else: the published model's lineage and metrics (`publish.py`,
hence the model card), `FinetuneResult` and the CLI's `--json`, and the jobs worker.
Figures that are derived (tokens per second, the metrics of the published weights,
epochs) are computed here, once, so every reader shows the same numbers.

No torch, no files: a record is plain data (JSON-ready through `to_dict`).
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptstore import __version__
from gptstore.training.config import TrainConfig
from gptstore.training.prepare import DatasetInfo

#: the catalog keeps at most this many points per curve (metrics.jsonl has them all)
MAX_CURVE_POINTS = 400
#: curves the catalog (and the model card) keep
PUBLISHED_CURVES = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                    "valid_token_accuracy")


#: config fields that say where this machine ran the run, not how the model was trained:
#: left out of the published lineage (a public card must not show the server's paths;
#: the data is in `dataset`, by name and digest)
MACHINE_FIELDS = frozenset({"train_file", "valid_file", "run_dir", "resume", "threads"})

@dataclass(frozen=True)
class RunRecord:
    """Everything a finished run did and measured."""

    config: TrainConfig  # resolved: every `auto` replaced by what ran
    auto_fields: tuple[str, ...]  # which fields the user left at `auto`
    base: str  # namespace/name@N of the base version
    task: str
    method: str
    kind: str  # the catalog version kind the method produces
    train_data: DatasetInfo
    valid_data: DatasetInfo | None
    label_names: tuple[str, ...] | None
    trainable: dict[str, Any]  # what trained: parameter counts, LoRA targets
    precision: str  # "bf16 autocast" or "fp32"
    steps: int  # optimiser steps done
    examples_seen: int
    train_tokens: int  # non-padding tokens through training steps
    train_seconds: float  # time in training steps only
    stopped_early: bool
    best: dict[str, Any] | None  # validation metrics of the best weights, with "step"
    last: dict[str, Any] | None  # the last validation, with "step"
    # the validation of the published weights, with "step" and "chosen_by"
    # (`choose_published`); None without validation
    published: dict[str, Any] | None
    curves: dict[str, list[list[float]]]  # name -> [[step, value], ...]
    padding_fraction: float  # of the token slots of an epoch's batches
    timings: dict[str, float]  # seconds: "prepare" (data), "load_model", "train" (in
    # optimiser steps), "validation"; the record returned by `finetune` adds "publish"
    # and "total" (command to published model; the catalog's copy is written before)
    run_dir: str
    code_version: str = field(default_factory=lambda: code_version())
    libraries: dict[str, str] = field(default_factory=lambda: library_versions())

    # -- derived, once --------------------------------------------------------------

    @property
    def tokens_per_second(self) -> float:
        return round(self.train_tokens / max(1e-9, self.train_seconds), 1)

    @property
    def epochs(self) -> float:
        return round(self.examples_seen / max(1, self.train_data.examples), 3)

    @property
    def published_step(self) -> int:
        """The step whose weights are published (`choose_published`), else the last."""
        return int(self.published["step"]) if self.published else self.steps

    @property
    def final(self) -> dict[str, Any]:
        """Validation metrics of the published weights (empty without validation)."""
        source = self.published or self.last or {}
        return {k: v for k, v in source.items() if k not in ("step", "chosen_by")}

    # -- what the catalog stores --------------------------------------------------------

    def lineage(self) -> dict[str, Any]:
        """Where the model comes from: base, data (with digests), the resolved config,
        which values were auto, seed, precision, code and library versions, what trained,
        and which checkpoint was published."""
        doc: dict[str, Any] = {
            "source": "finetune",
            "base": self.base,
            "task": self.task,
            "method": self.method,
            "dataset": self.train_data.to_dict(),
            "valid_dataset": self.valid_data.to_dict() if self.valid_data else None,
            "hyperparameters": {k: v for k, v in self.config.to_dict().items()
                                if k not in MACHINE_FIELDS},
            "auto": list(self.auto_fields),
            "seed": self.config.seed,
            "precision": self.precision,
            "code_version": self.code_version,
            "libraries": dict(self.libraries),
            **self.trainable,
            "published_checkpoint": (
                {"step": self.published_step, "chosen_by": self.published["chosen_by"]}
                if self.published
                else {"step": self.steps, "chosen_by": "end of training (no validation set)"}),
        }
        if self.label_names is not None:
            doc["label_names"] = list(self.label_names)
        return doc

    def metrics(self) -> dict[str, Any]:
        """What the run measured: `final` (the published weights' validation metrics),
        `best` (with its step), `last` (the end-of-training validation when it differs),
        `train` (tokens, seconds, throughput, steps) and the thinned `curves`."""
        doc: dict[str, Any] = {}
        if self.published is not None:
            doc["final"] = self.final
        if self.best is not None:
            doc["best"] = dict(self.best)
        if self.last is not None and self.last != self.best:
            doc["last"] = dict(self.last)
        train_loss = self.curves.get("train_loss", [])
        doc["train"] = {
            "loss": train_loss[-1][1] if train_loss else None,
            "tokens": self.train_tokens,
            "seconds": round(self.train_seconds, 3),
            "tokens_per_second": self.tokens_per_second,
            "steps": self.steps,
            "epochs": self.epochs,
            "stopped_early": self.stopped_early,
        }
        doc["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        doc["curves"] = {name: thin(points) for name, points in self.curves.items()
                         if name in PUBLISHED_CURVES}
        return doc

    def summary(self) -> dict[str, Any]:
        """The flat summary `gptstore finetune --json` prints (with the published ref)."""
        return {
            "task": self.task, "method": self.method, "kind": self.kind, "base": self.base,
            "train_tokens": self.train_tokens, "train_seconds": round(self.train_seconds, 3),
            "tokens_per_second": self.tokens_per_second, "steps": self.steps,
            "epochs": self.epochs, "train_examples": self.train_data.examples,
            "valid_examples": self.valid_data.examples if self.valid_data else 0,
            "final": self.final, "best": self.best, "last": self.last,
            "published_step": self.published_step,
            "stopped_early": self.stopped_early,
            "padding_fraction": round(self.padding_fraction, 4),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "run_dir": self.run_dir, "config": self.config.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (a job record stores this)."""
        return asdict(self)


#: metrics that are a share of examples (or tokens) right: their noise on n examples is
#: the binomial standard error sqrt(p (1 - p) / n)
PROPORTIONS = ("accuracy", "macro_f1", "token_accuracy")


def choose_published(best: dict[str, Any] | None, last: dict[str, Any] | None, *,
                     metric: str, higher: bool, steps: int, valid_examples: int
                     ) -> dict[str, Any] | None:
    """Which validated weights to publish: the best validation's, unless the run's last
    weights (validated at its last step) are within the validation set's noise of them.

    On a small validation split the "best" checkpoint is mostly chance: with 40 SST-2
    sentences one sentence is 2.5 points, and the step-0 (zero-shot) weights won on
    validation while the fine-tune's last weights scored 0.856 against 0.788 on the 872
    dev sentences (docs/design.md). So an earlier checkpoint replaces the last weights
    only when it is better by more than one binomial standard error of its accuracy on
    `valid_examples`; a loss metric (no such bound here) keeps the best as it is.
    """
    if best is None:
        return None
    chosen = {**best, "chosen_by": f"best validation {metric}"}
    if last is None or last["step"] == best["step"] or last["step"] != steps:
        return chosen
    noise = noise_of(metric, best[metric], valid_examples)
    if noise is None or not within_noise(best, last, metric=metric, higher=higher,
                                         valid_examples=valid_examples):
        return chosen
    return {**last, "chosen_by": (
        f"end of training: the best validation {metric} (step {best['step']}: "
        f"{best[metric]:.4g}) was within one standard error ({noise:.3f} on "
        f"{valid_examples} examples) of the last ({last[metric]:.4g})")}


def noise_of(metric: str, value: float, valid_examples: int) -> float | None:
    """One binomial standard error of a proportion metric on `valid_examples`; None for
    a metric with no such bound (loss) or without examples."""
    if metric not in PROPORTIONS or valid_examples < 1:
        return None
    p = min(1.0, max(0.0, float(value)))
    return float((p * (1 - p) / valid_examples) ** 0.5)


def within_noise(best: dict[str, Any], other: dict[str, Any], *, metric: str, higher: bool,
                 valid_examples: int) -> bool:
    """Whether `other` is worse than `best` by at most one standard error of `best`."""
    noise = noise_of(metric, best[metric], valid_examples)
    if noise is None:
        return False
    margin = (best[metric] - other[metric]) if higher else (other[metric] - best[metric])
    return bool(margin <= noise)


def thin(points: list[list[float]], limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Every k-th point (and the last), so a long run's curve stays a small JSON list."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`gptstore <version>`, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"gptstore {__version__}" + (f" (git {sha})" if sha else "")


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
