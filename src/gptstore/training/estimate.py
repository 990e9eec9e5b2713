"""How fast a fine-tune of a base will train here, for the time estimate a person sees
before training (`gptstore data validate --base`, the wizard's file preview).

The figure comes from this store's own finished fine-tunes of the same base with the
same method: each published run recorded its non-padding tokens, training-loop seconds
and optimiser steps (`metrics.train`). Throughput depends most on how many tokens a step
carries (a step's fixed cost is paid per step: a 40-example chat file trained at batch 1
ran at a few tokens/s where SST-2 at batch 16 ran at hundreds), so the runs whose tokens
per step are nearest the new file's speak for it. Without any, a reference figure stands
in, and the estimate says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from gptstore.data.report import CPU_LORA_TOKENS_PER_SECOND
from gptstore.training.config import DEFAULT_EPOCHS, auto_batch_size, auto_valid_split

#: runs (nearest in tokens per step) whose median speaks for a new one
NEAREST_RUNS = 3


@dataclass(frozen=True)
class Throughput:
    """Trained tokens per second to expect, and what the figure rests on."""

    tokens_per_second: float
    runs: int  # finished fine-tunes it was measured on; 0: the reference figure
    base: str
    method: str

    @property
    def basis(self) -> str:
        if self.runs:
            return (f"measured: {self.method} fine-tunes of {self.base} in this store "
                    f"({self.runs} run{'s' if self.runs > 1 else ''} of the most similar "
                    "step size)")
        return (f"a reference figure for {self.method} on SmolLM2-135M on a 2-core CPU; no "
                f"{self.method} fine-tune of {self.base} has finished in this store yet")

    def to_dict(self) -> dict[str, Any]:
        return {"tokens_per_second": round(self.tokens_per_second, 1), "runs": self.runs,
                "basis": self.basis}


def tokens_per_step(examples: int, mean_tokens: float) -> float:
    """Tokens an optimiser step of a default run on this file carries: the `auto` batch
    size for the examples left after the `auto` validation split, times their mean."""
    held_out = round(examples * auto_valid_split(examples))
    return auto_batch_size(max(1, examples - held_out), DEFAULT_EPOCHS) * max(1.0, mean_tokens)


def expected_throughput(catalog: Any, base: Any, *, step_tokens: float,
                        method: str = "lora") -> Throughput:
    """Throughput of a `method` fine-tune of `base` (a VersionInfo) whose steps carry
    `step_tokens` tokens, from the store's finished runs of the same kind."""
    runs: dict[tuple[int, float], float] = {}  # per run (its checkpoint models repeat it)
    for version in catalog.derived_versions(base):
        lineage, train = version.lineage, (version.metrics or {}).get("train") or {}
        if lineage.get("source") != "finetune" or lineage.get("method") != method:
            continue
        tokens, seconds, steps = train.get("tokens"), train.get("seconds"), train.get("steps")
        if not (tokens and seconds and steps):
            continue
        runs[(int(tokens), float(seconds))] = tokens / steps
    if not runs:
        return Throughput(CPU_LORA_TOKENS_PER_SECOND, 0, base.model, method)
    nearest = sorted(runs.items(), key=lambda item: abs(math.log(item[1] / step_tokens)))
    chosen = nearest[:NEAREST_RUNS]
    rate = statistics.median(tokens / seconds for (tokens, seconds), _ in chosen)
    return Throughput(rate, len(chosen), base.model, method)


def estimate_report(catalog: Any, base: Any, report: Any, *, epochs: int = 1,
                    method: str = "lora") -> Throughput | None:
    """Fill a validation report's time estimate (`tokens_per_second`, `epochs`,
    `estimated_training_seconds`, `estimate_basis`) for a fine-tune of `base`; None
    (and the report untouched) when it has no token counts."""
    if report.tokens is None or not report.training_examples:
        return None
    throughput = expected_throughput(
        catalog, base, method=method,
        step_tokens=tokens_per_step(report.training_examples, report.tokens.mean))
    report.tokens_per_second = throughput.tokens_per_second
    report.epochs = epochs
    report.estimated_training_seconds = report.tokens.total * epochs / throughput.tokens_per_second
    report.estimate_basis = throughput.basis
    return throughput
