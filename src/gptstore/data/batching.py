"""Batches that waste little compute on padding: the order and the padded arrays.

Owns which examples go together in a micro-batch (`plan_batches`, `plan_eval_batches`),
how a micro-batch is padded (`pad_batch`, right padding) and how much padding a plan
costs (`padding_stats`). numpy only: the training loop turns the arrays into tensors.

Why length grouping and not packing: a padded token costs as much as a real one in
every matmul, so a batch of random SST-2 sentences (mean 24 tokens, max 64) is about
half padding. Grouping examples of similar length (as Hugging Face's
`LengthGroupedSampler`: shuffle, cut into mega-batches, sort each by length, split,
shuffle the batches) brings that to a few percent while keeping "one row = one example",
which the classification head (last non-padding token) and the serving path need.
Packing several examples into one row would also remove the rest, but needs a
block-diagonal attention mask that the SDPA fast path does not take, and per-example
position ids; at a few percent left it is not worth it (see docs/design-training.md).

The plan of an epoch depends only on (seed, epoch), so a resumed run rebuilds the
exact same batches and skips the ones it has done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: a mega-batch holds this many batches before it is sorted by length
MEGA_BATCH_FACTOR = 50


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    group_by_length: bool = True,
) -> list[list[int]]:
    """The micro-batches of one training epoch, as lists of example indices.

    Deterministic in (seed, epoch). With `group_by_length`, examples are shuffled, cut
    into mega-batches of `MEGA_BATCH_FACTOR * batch_size`, each sorted by length and
    split into batches; the batches are then shuffled so lengths do not trend within
    the epoch. Without it, plain shuffled batches. The last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not group_by_length:
        return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    lens = np.asarray(lengths)
    mega = MEGA_BATCH_FACTOR * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = order[start:start + mega]
        # stable sort, longest first: ties keep the shuffled order
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    # the (at most one per mega-batch) short batch goes where the shuffle puts it
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def plan_eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches for evaluation or feature extraction: sorted by length (least padding),
    no randomness; the caller restores the example order from the indices."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    *,
    labels: Sequence[Sequence[int]] | None = None,
    ignore_index: int = -100,
) -> dict[str, np.ndarray]:
    """Right-pad token lists to the longest one.

    Returns int64 arrays `input_ids` [B, T], `attention_mask` [B, T] (1 = real token)
    and, when `labels` are given, `labels` [B, T] padded with `ignore_index`. Right
    padding keeps position ids 0..len-1 for every real token with no extra input.
    """
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lab = np.full((len(sequences), width), ignore_index, dtype=np.int64)
        for row, seq in enumerate(labels):
            lab[row, :len(seq)] = seq
        out["labels"] = lab
    return out


@dataclass(frozen=True)
class PaddingStats:
    """Real and padded token slots of a batch plan."""

    real_tokens: int
    slots: int  # batch rows x padded width, summed over batches

    @property
    def padding_fraction(self) -> float:
        """Share of the computed token slots that are padding (wasted)."""
        return 0.0 if self.slots == 0 else 1 - self.real_tokens / self.slots

    def to_dict(self) -> dict[str, float | int]:
        return {"real_tokens": self.real_tokens, "slots": self.slots,
                "padding_fraction": round(self.padding_fraction, 4)}


def padding_stats(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> PaddingStats:
    """How many token slots a plan computes, and how many of them are real."""
    real = slots = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        real += sum(sizes)
        slots += len(sizes) * max(sizes)
    return PaddingStats(real_tokens=real, slots=slots)
