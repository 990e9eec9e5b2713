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
* The tensors lie on address space reserved for every slot at the full context
  (`_reserve`: anonymous memory), not on allocated memory. The kernel backs a page when
  it is first written and an untouched page reads as zeros: the system's pages play the
  part of a paged cache's blocks (4 KiB: 16 positions of a 64-wide head in fp32), so memory
  follows the positions the live sequences filled, without block tables, and the cache
  never grows by copying. A released slot's pages go back at once (but an idle
  base's last slot, below). Before, zero-filled
  tensors grew by doubling with the longest sequence and the live slots: each growth
  stopped every stream for a copy of the whole cache, and on an AVX2 EPYC VM sixteen
  chat requests arriving together spent 140-240 ms of their time to first token
  zero-filling 94 MB (fp32 SmolLM2, one slot grown to sixteen). docs/design.md has the
  measurements.
* The last sequence of an idle base leaves its slot warm: slot 0, the one the next
  request takes, keeps the pages that sequence wrote (zeroed in place, up to
  `_WARM_BYTES`) while the base waits. A chat's next turn copies its cached history
  into that slot: 1,100 positions of bf16 SmolLM2 took 8-9 ms into pages the kernel
  must first back and zero, 2 ms into the warm slot (Zen 4 EPYC; docs/design.md).

Knows nothing of models' maths, only shapes; the decoders write and read the tensors.
"""

from __future__ import annotations

import math
import mmap
import platform
import sys
from dataclasses import dataclass

import torch

# Linux's MAP_NORESERVE (Python's mmap names it from 3.13 on): the reservation is address
# space, not a commitment of memory, so a long context on a small machine still maps.
# Its value differs by architecture; where we do not know it, the mapping goes without.
_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform == "linux" and
                     platform.machine() in ("x86_64", "aarch64", "riscv64", "s390x") else 0)
# Where MADV_DONTNEED zeroes private anonymous pages (Linux), released slots give their
# pages back; elsewhere they keep them (stale but finite values, masked when read) until
# the base goes idle.
_GIVE_BACK = sys.platform == "linux" and hasattr(mmap, "MADV_DONTNEED")
# The most address space one cache reserves at once: a longer context on many slots
# (a 128k-token model) reserves less first and grows by copying if a sequence needs it.
_RESERVE_BYTES = 1 << 38
# The most memory an idle base's warm slot keeps backed between requests; a longer
# sequence's slot goes back whole, as every other free slot does.
_WARM_BYTES = 64 << 20
# Positions per slot reserved first where a reservation costs memory: under strict
# overcommit (every mapped byte is charged, MAP_NORESERVE or not) and where there is no
# anonymous private mapping (Windows: zero-filled memory); it then grows by doubling.
_MIN_CAPACITY = 128


def _reservations_cost_memory() -> bool:
    if not hasattr(mmap, "MAP_PRIVATE"):
        return True
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


@dataclass(eq=False)
class Slot:
    """A sequence's place in the cache; `index` changes when slots are compacted."""

    index: int
    length: int = 0  # positions filled (tokens whose keys/values are cached)


class SlotKVCache:
    """Per-sequence key/value storage for all layers of one decoder."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_slots: int,
                 max_length: int, dtype: torch.dtype, *,
                 reserve_bytes: int | None = None) -> None:
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.max_slots, self.max_length, self.dtype = max_slots, max_length, dtype
        self.reserve_bytes = _RESERVE_BYTES if reserve_bytes is None else reserve_bytes
        self.slots: list[Slot] = []
        self.capacity = 0  # positions per slot reserved
        self.k = torch.empty(0, dtype=dtype)
        self.v = torch.empty(0, dtype=dtype)
        self._memory: mmap.mmap | None = None  # under k (first half) and v
        # positions an idle base's slot 0 keeps backed (zeroed) for the next request
        self._warm_length = 0

    # -- slots ------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return self.max_slots - len(self.slots)

    def allocate(self) -> Slot:
        if len(self.slots) >= self.max_slots:
            raise RuntimeError("no free KV-cache slot (the scheduler should have waited)")
        slot = Slot(index=len(self.slots))
        self._warm_length = 0  # slot 0 taken, or none was warm
        self.slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Free a slot; the last live slot moves into its place to keep slots dense, and
        the pages the move leaves unused go back to the system. The last sequence of an
        idle base leaves its slot warm (`_keep_warm`)."""
        if slot.index < 0 or slot.index >= len(self.slots) or self.slots[slot.index] is not slot:
            return  # already released
        last = self.slots.pop()
        if last is not slot:
            self._give_back(slot.index)  # its positions read as zeros again
            n = last.length
            if n:
                self.k[:, slot.index, :, :n] = self.k[:, last.index, :, :n]
                self.v[:, slot.index, :, :n] = self.v[:, last.index, :, :n]
            last.index = slot.index
            self.slots[slot.index] = last
        slot.index = -1
        if self.slots:
            self._give_back(len(self.slots))  # the last slot's old place
        elif self._keeps_reservation():
            self._keep_warm(last.length)
        else:
            self._reset()

    def _keep_warm(self, length: int) -> None:
        """Make slot 0, free now and its positions [0, length) the last written, the warm
        slot: zero those positions in place (their pages stay backed) and give back every
        other page of it. Every position reads as zeros afterwards, as on a fresh page:
        an attention call reads a shorter sequence's slot past its length (masked), and a
        stale NaN there would turn the masked weights' zeros into NaN.

        Only when the base goes idle, so the zeroing (3.5-4 ms for 1,100 positions of
        bf16 SmolLM2) delays no running stream, and no later release in the same step
        gives the zeroed pages back unused."""
        if not 0 < length <= self.capacity or length * self._position_bytes > _WARM_BYTES:
            self._give_back(0)
            return
        self.k[:, 0, :, :length].zero_()
        self.v[:, 0, :, :length].zero_()
        self._give_back(0, start=length)  # what a failed step may have written past it
        self._warm_length = length

    def _keeps_reservation(self) -> bool:
        """Whether the cache keeps its address space while no sequence is live: where it
        holds every slot at the full context and released pages go back (Linux), keeping
        it costs only the warm slot's pages; elsewhere (a shorter or committed reservation,
        memory that cannot be given back) it goes back whole."""
        return _GIVE_BACK and self._memory is not None \
            and self.capacity == self.max_length and not _reservations_cost_memory()

    # -- storage ----------------------------------------------------------------------

    def ensure_capacity(self, length: int) -> None:
        """Make room for positions [0, length) in every slot."""
        if length <= self.capacity:
            return
        if length > self.max_length:
            raise ValueError(f"{length} positions exceed the cache's maximum {self.max_length}")
        per_position = self.max_slots * self._position_bytes  # every slot's
        # the full context where the address space allows; past a shorter reservation,
        # twice the last one (each growth copies every live slot)
        first = _MIN_CAPACITY if _reservations_cost_memory() else \
            self.reserve_bytes // per_position
        capacity = min(self.max_length, max(length, 2 * self.capacity, first))
        while True:
            try:
                k, v, memory = _reserve(
                    (self.n_layers, self.max_slots, self.n_kv_heads, capacity, self.head_dim),
                    self.dtype)
                break
            except OSError:  # the system refused the address space
                if capacity <= length:
                    raise
                capacity = max(length, capacity // 2)
        filled = max((slot.length for slot in self.slots), default=0)
        if filled:  # a reservation too short for this sequence: copy what is filled
            k[:, :len(self.slots), :, :filled] = self.k[:, :len(self.slots), :, :filled]
            v[:, :len(self.slots), :, :filled] = self.v[:, :len(self.slots), :, :filled]
        self.k, self.v, self.capacity, self._memory = k, v, capacity, memory
        self._warm_length = 0  # its free slots are fresh

    def _give_back(self, index: int, start: int = 0) -> None:
        """Make slot `index`'s positions from `start` on (all layers and heads, keys and
        values) read as zeros, returning their whole pages to the system (Linux); the
        caller has zeroed the positions before `start`, so the page that holds `start`
        goes too. Only pages inside the slot's own bytes go; the few bytes of a page it
        shares with a neighbouring slot (a context whose slot is not a whole number of
        pages) are zeroed in place."""
        if self._memory is None or not _GIVE_BACK:
            return
        row = self.head_dim * self.k.element_size()  # one position of one head
        head = self.capacity * row
        block = self.n_kv_heads * head  # one slot of one layer
        page = mmap.PAGESIZE
        for tensor in (0, 1):
            for layer in range(self.n_layers):
                base = ((tensor * self.n_layers + layer) * self.max_slots + index) * block
                low = -(-base // page) * page  # the slot's whole pages only
                high = (base + block) // page * page
                # one run of bytes per head from `start` (one for the slot from 0)
                runs = [(base, base + block)] if not start else \
                    [(base + h * head + start * row, base + (h + 1) * head)
                     for h in range(self.n_kv_heads)]
                for begin, end in runs:
                    first = max(low, begin // page * page)
                    last = min(high, -(-end // page) * page)
                    if last <= first:
                        self._zero(begin, end)
                        continue
                    self._memory.madvise(mmap.MADV_DONTNEED, first, last - first)
                    self._zero(begin, first)
                    self._zero(last, end)

    def _zero(self, begin: int, end: int) -> None:
        """Zero bytes [begin, end) of the mapping in place (nothing when empty)."""
        if end > begin and self._memory is not None:
            self._memory[begin:end] = bytes(end - begin)

    def _reset(self) -> None:
        """Give the address space back (no sequence is live; see `_keeps_reservation`)."""
        self.k = torch.empty(0, dtype=self.dtype)
        self.v = torch.empty(0, dtype=self.dtype)
        self.capacity = 0
        self._memory = None
        self._warm_length = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the positions the live sequences filled and of the warm slot's: about
        what the cache holds in memory (the system backs whole pages; where released
        slots cannot give theirs back, off Linux, they stay until the base goes idle)."""
        return self._position_bytes * (sum(slot.length for slot in self.slots)
                                       + self._warm_length)

    @property
    def _position_bytes(self) -> int:
        """Bytes of one position of one slot: keys and values of every layer and head."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.k.element_size()


def _reserve(shape: tuple[int, ...], dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor, mmap.mmap | None]:
    """Keys and values of `shape` on one private anonymous mapping: zero pages until
    written, backed by memory only where written. Raises OSError where the system
    refuses the address space."""
    count = math.prod(shape)
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows: plain zero-filled memory
        return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype), None
    nbytes = count * torch.empty(0, dtype=dtype).element_size()
    memory = mmap.mmap(-1, 2 * nbytes, flags=mmap.MAP_PRIVATE | _NORESERVE)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        # where transparent huge pages are on for every mapping, a write would take 2 MiB
        # for one head's first positions
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    both = torch.frombuffer(memory, dtype=dtype, count=2 * count)
    return both[:count].view(shape), both[count:].view(shape), memory
