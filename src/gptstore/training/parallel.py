"""Data parallelism across the cores of one process: a micro-batch's rows in shards,
each shard's forward and backward on its own worker thread with its own torch thread.

Why: a LoRA step of a small model is thousands of small ops. With one process-wide
OpenMP team every op forks and joins all cores, and a neighbour process on one core
makes the other thread wait at every barrier. Two shards of 8 rows on two worker
threads (one OpenMP thread each) keep both cores busy with no barrier between them.
Measured on the 2-core reference machine, SST-2 batches of 16 with SmolLM2-135M +
LoRA: one thread 313 tok/s, two OpenMP threads 428-453, two shards 467-482; with a busy
neighbour on one core two OpenMP threads fall to ~145 tok/s, two shards keep ~300.

Determinism: each shard returns its gradients (`torch.autograd.grad`, nothing is
accumulated concurrently); the caller sums them in a fixed order (micro-batch, then
shard), so a run is reproducible. Shards are only used when the forward pass draws no
random numbers (no dropout): worker threads would draw from torch's one generator in
an unpredictable order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

#: a shard's work: builds its batch, runs the forward pass, returns (loss already divided
#: by the window's denominator, summed loss, tokens, correct predictions)
ShardWork = Callable[[], tuple[torch.Tensor, float, int, int]]


def split_rows(indices: Sequence[int], shards: int) -> list[list[int]]:
    """Interleaved shards (rows i, i+k, ...): a length-sorted batch splits into shards of
    equal lengths, so they finish together. Empty shards are dropped."""
    parts = [list(indices[i::shards]) for i in range(shards)]
    return [p for p in parts if p]


@dataclass
class ShardResult:
    loss_sum: float
    tokens: int
    correct: int


class ShardRunner:
    """Worker threads that run shard work and return gradients for `params`."""

    def __init__(self, shards: int, params: Sequence[torch.nn.Parameter], cores: int) -> None:
        self.shards = shards
        self.params = list(params)
        self.threads_per_shard = max(1, cores // shards)
        self.pool = ThreadPoolExecutor(max_workers=shards, thread_name_prefix="gptstore-shard",
                                       initializer=torch.set_num_threads,
                                       initargs=(self.threads_per_shard,))

    def _run(self, work: ShardWork) -> tuple[list[torch.Tensor | None], float, int, int]:
        scaled, loss_sum, tokens, correct = work()
        grads = torch.autograd.grad(scaled, self.params, allow_unused=True)
        return list(grads), loss_sum, tokens, correct

    def accumulate(self, works: Sequence[ShardWork]) -> ShardResult:
        """Run every shard's work (all at once, `shards` at a time) and add the gradients
        into `param.grad` in the order of `works`."""
        futures = [self.pool.submit(self._run, work) for work in works]
        loss_sum, tokens, correct = 0.0, 0, 0
        for future in futures:  # fixed order: the sums are reproducible
            grads, shard_loss, shard_tokens, shard_correct = future.result()
            loss_sum += shard_loss
            tokens += shard_tokens
            correct += shard_correct
            for param, grad in zip(self.params, grads, strict=True):
                if grad is None:
                    continue
                if param.grad is None:
                    param.grad = grad
                else:
                    param.grad += grad
        return ShardResult(loss_sum, tokens, correct)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
