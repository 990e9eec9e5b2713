"""The step-0 validation of a classification fine-tune, kept for the next run that would
compute the same numbers.

Before its first step, a classifier whose head starts from the label words' LM-head rows
is the base's zero-shot classifier (LoRA adapters start at B = 0 and add exact zeros), so
its validation (the floor the published model may not fall below, loop.py) depends only
on the base, the label words, the validation examples and how the numbers are computed:
not on the learning rate, the epochs, the LoRA rank or targets, dropout or weight decay.
A sweep's trials and a user's reruns with other settings therefore repeat it exactly; on
an AVX2-only EPYC in fp32 it was ~43 s of a 352 s run (400 SST-2 sentences, the 872 dev
sentences as validation; docs/design.md). The
metrics are stored under a digest of everything they depend on, in the home's
`cache/zero-shot/`, one small JSON file each, written whole (temp file, then rename).

What the key holds: the base's manifest digest (weights, tokenizer, config), the task and
label names, the fine-tuning method (a frozen backbone evaluates from cached features),
the precision, the CPU model, torch version and thread count (kernels round differently),
the padding id and every validation example's token ids and label, and `VERSION`, to be
raised whenever the evaluation code changes what it computes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptstore.data.types import EncodedExample

#: raise when evaluate_examples, the head initialisation or the classification forward
#: change the numbers they give
VERSION = 1
FOLDER = Path("cache") / "zero-shot"


def cache_key(*, base_digest: str, task: str, label_names: Sequence[str] | None,
              method: str, bf16: bool, pad_id: int, threads: int,
              examples: Sequence[EncodedExample]) -> str:
    from gptstore.inference.precision import machine_key

    digest = hashlib.sha256()
    head = {"version": VERSION, "base": base_digest, "task": task,
            "labels": list(label_names or []), "method": method, "bf16": bf16,
            "pad_id": pad_id, "threads": threads, "machine": machine_key()}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.label]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def read(home: Path, key: str) -> dict[str, float] | None:
    """The metrics stored under `key`, or None (none stored, or a damaged file)."""
    try:
        doc: Any = json.loads((Path(home) / FOLDER / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    metrics = doc.get("metrics") if isinstance(doc, dict) else None
    if not isinstance(metrics, dict) or not all(
            isinstance(v, int | float) for v in metrics.values()):
        return None
    return {str(k): float(v) for k, v in metrics.items()}


def write(home: Path, key: str, metrics: dict[str, float]) -> None:
    """Store `metrics` under `key`; a home that cannot be written only loses the reuse."""
    folder = Path(home) / FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"metrics": metrics}, out)
            os.replace(tmp, folder / f"{key}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return


def forget(home: Path) -> None:
    """Drop every stored step-0 validation (the benchmarks time a first run, which has
    nothing to reuse, as their peers have not)."""
    shutil.rmtree(Path(home) / FOLDER, ignore_errors=True)
