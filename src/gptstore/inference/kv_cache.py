"""The key/value cache of the hand-written decoders: one slot per running sequence.

Layout, per base model: two tensors `k`, `v` of shape
`[layers, slots, kv_heads, capacity, head_dim]`. A sequence owns one slot; its token at
position p lives at `[:, slot, :, p]`. Why this layout, on a CPU:

* Each (slot, head) is a contiguous `[capacity, head_dim]` matrix, so the keys of a run
  of slots `k[layer, a:b, :, :length]` are a plain strided view that
  `scaled_dot_product_attention` reads in place: a decode step never gathers or copies
  the cache. (A paged cache with block tables would need a gather of every sequence's
  keys per layer per step: on a CPU that copy costs as much as the attention.)
* Active slots are kept dense (0..n-1): when a sequence leaves, the last slot's contents
  move into the hole (a copy of one sequence, once). The running batch is then always
  one run of consecutive slots, decoded with one attention call per layer.
* Capacity (positions per slot) grows geometrically with the longest live sequence, and
  the slots dimension with the number of live sequences; both shrink back when the base
  goes idle, so memory follows the load instead of `slots x context` up front
  (SmolLM2: 23 KB per token in bf16). Growing the slots too matters for latency: a lone
  request with a 1,000-token prompt (a cached system prompt) on an idle base otherwise
  zero-filled the cache of all 16 slots at 2,048 positions, 0.75 GB in bf16, ~0.5 s of
  its time to first token.

Knows nothing of models' maths, only shapes; the decoders write and read the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MIN_CAPACITY = 128


@dataclass(eq=False)
class Slot:
    """A sequence's place in the cache; `index` changes when slots are compacted."""

    index: int
    length: int = 0  # positions filled (tokens whose keys/values are cached)


class SlotKVCache:
    """Per-sequence key/value storage for all layers of one decoder."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_slots: int,
                 max_length: int, dtype: torch.dtype) -> None:
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_slots, self.max_length, self.dtype = max_slots, max_length, dtype
        self.slots: list[Slot] = []
        self.capacity = 0  # positions per slot
        self.slot_capacity = 0  # slots the tensors hold (live ones are 0..len(slots)-1)
        self.k = torch.empty(0, dtype=dtype)
        self.v = torch.empty(0, dtype=dtype)

    # -- slots ------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.max_slots - len(self.slots)

    def allocate(self) -> Slot:
        if len(self.slots) >= self.max_slots:
            raise RuntimeError("no free KV-cache slot (the scheduler should have waited)")
        slot = Slot(index=len(self.slots))
        self.slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Free a slot; the last live slot moves into its place to keep slots dense."""
        if slot.index < 0 or slot.index >= len(self.slots) or self.slots[slot.index] is not slot:
            return  # already released
        last = self.slots.pop()
        if last is not slot:
            n = last.length
            if n:
                self.k[:, slot.index, :, :n] = self.k[:, last.index, :, :n]
                self.v[:, slot.index, :, :n] = self.v[:, last.index, :, :n]
            last.index = slot.index
            self.slots[slot.index] = last
        slot.index = -1
        if not self.slots:
            self._reset()

    # -- storage ----------------------------------------------------------------------

    def ensure_capacity(self, length: int) -> None:
        """Make room for positions [0, length) in every live slot."""
        live = len(self.slots)
        if length <= self.capacity and live <= self.slot_capacity:
            return
        if length > self.max_length:
            raise ValueError(f"{length} positions exceed the cache's maximum {self.max_length}")
        capacity = _grown(self.capacity, length, _MIN_CAPACITY, self.max_length)
        slots = _grown(self.slot_capacity, live, 1, self.max_slots)
        shape = (self.n_layers, slots, self.n_kv_heads, capacity, self.head_dim)
        # zeros, not empty: a decode step reads up to the longest row's length and masks
        # the rest, and masked garbage could be NaN (0 x NaN is NaN in the softmax's sum)
        k = torch.zeros(shape, dtype=self.dtype)
        v = torch.zeros(shape, dtype=self.dtype)
        if self.capacity and live:
            kept = min(live, self.slot_capacity)
            k[:, :kept, :, :self.capacity] = self.k[:, :kept]
            v[:, :kept, :, :self.capacity] = self.v[:, :kept]
        self.k, self.v, self.capacity, self.slot_capacity = k, v, capacity, slots

    def _reset(self) -> None:
        """Give the memory back when no sequence is live."""
        self.k = torch.empty(0, dtype=self.dtype)
        self.v = torch.empty(0, dtype=self.dtype)
        self.capacity = self.slot_capacity = 0

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def _grown(current: int, needed: int, least: int, most: int) -> int:
    """`current` doubled until it holds `needed` (at least `least`, at most `most`)."""
    if needed <= current:
        return current
    size = max(least, current * 2)
    while size < needed:
        size *= 2
    return min(size, most)
