"""Validation: a task's metrics over a set of examples, during training or on a stored model.

- `evaluate_examples`: the loop's validation (and `gptstore eval`'s core): examples are
  batched by length (least padding), run in inference mode under the run's precision
  (on the loop's shard threads when it has them),
  and the task turns the summed terms into metrics (loss / perplexity / token accuracy
  for causal-lm; loss / accuracy / macro-F1 for classification).
- `extract_features`: the frozen backbone's pooled output per example, computed once
  for head-only classification (training then costs one small matmul per batch).
- `evaluate_file`: `gptstore eval NAME --data FILE`: load any store model through
  the one loader (`inference.loader.load_version`), read the labelled file with the
  model's tokenizer and label set, and evaluate.

Does not train, checkpoint or publish.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptstore.data.batching import plan_eval_batches
from gptstore.data.types import EncodedExample
from gptstore.training.tasks import Stats, Task, Terms, amp

#: evaluation batches hold this many examples (no gradients: larger batches are cheap)
EVAL_BATCH_SIZE = 32


def evaluate_examples(
    model: nn.Module,
    task: Task,
    examples: Sequence[EncodedExample],
    *,
    pad_id: int,
    bf16: bool,
    batch_size: int = EVAL_BATCH_SIZE,
    features: torch.Tensor | None = None,
    frozen_backbone: bool = False,
    executor: Executor | None = None,
) -> dict[str, float]:
    """The task's metrics over `examples`; `features` [N, H] replaces the backbone for a
    head-only classifier. The caller puts the model in eval mode.

    `executor`: worker threads (the training loop's shard threads, one core each) that
    run whole batches side by side, as training runs its shards: on a small model that
    beats one multi-threaded pass (training/parallel.py). Results are summed in batch
    order either way, so the metrics do not depend on it.
    """
    lengths = [e.num_tokens for e in examples]

    def run(indices: list[int]) -> Terms:
        # grad mode and autocast are per thread: set them here, on whichever runs this
        with torch.inference_mode(), amp(bf16):
            batch = task.make_batch([examples[i] for i in indices], pad_id)
            if features is not None:
                batch.features = features[indices]
            return task.forward(model, batch, frozen_backbone=frozen_backbone)

    plan = plan_eval_batches(lengths, batch_size)
    results = executor.map(run, plan) if executor is not None else map(run, plan)
    stats = Stats()
    for terms in results:  # in batch order
        stats.add(terms)
    return task.metrics(stats)


def extract_features(
    model: nn.Module,
    task: Any,
    examples: Sequence[EncodedExample],
    *,
    pad_id: int,
    bf16: bool,
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[torch.Tensor, int]:
    """Pooled backbone output per example, in the examples' order: ([N, H] fp32, tokens)."""
    out: torch.Tensor | None = None
    tokens = 0
    lengths = [e.num_tokens for e in examples]
    with torch.no_grad(), amp(bf16):
        for indices in plan_eval_batches(lengths, batch_size):
            batch = task.make_batch([examples[i] for i in indices], pad_id)
            pooled = task.features(model, batch)  # [B, H]
            if out is None:
                out = torch.empty(len(examples), pooled.shape[1], dtype=torch.float32)
            out[torch.tensor(indices)] = pooled
            tokens += batch.n_tokens
    assert out is not None
    return out, tokens


def evaluate_file(catalog: Any, ref: str, path: str | Path, *, batch_size: int =
                  EVAL_BATCH_SIZE, max_length: int | None = None) -> dict[str, Any]:
    """`gptstore eval`: the task's metrics of store model `ref` on a labelled file."""
    from gptstore.data import default_max_length, load_training_data
    from gptstore.inference.loader import load_version
    from gptstore.training.tasks import get_task

    loaded = load_version(catalog, ref)
    task = get_task(loaded.task)
    length = max_length or loaded.max_length or default_max_length(loaded.tokenizer)
    data = load_training_data(path, loaded.task, loaded.tokenizer, length,
                              label_names=loaded.label_names)
    started = time.perf_counter()
    metrics = evaluate_examples(loaded.model, task, data.examples,
                                pad_id=loaded.pad_token_id,
                                bf16=loaded.dtype == torch.bfloat16, batch_size=batch_size)
    return {"model": loaded.version.ref, "task": loaded.task, "data": str(path),
            "examples": len(data.examples), "metrics": metrics,
            "seconds": round(time.perf_counter() - started, 3)}
