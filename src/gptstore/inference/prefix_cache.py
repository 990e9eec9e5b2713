"""Prefix caching: keys/values of prompt prefixes kept after their request ends, so a
shared system prompt or the history of a chat is computed once and reused.

The unit is a *block* of `block_tokens` consecutive prompt tokens at a block-aligned
position. A block is stored under (its parent block's id, its own tokens), so a block
is found only after the same tokens before it, from position 0: a lookup walks from the
root, block by block, and reuses the longest chain found. The root is a *namespace*
(the adapter serving the request, or "" for the base): an adapter that changes the
key/value projections changes the cached values, so adapters never share blocks.

Memory is bounded by `budget_bytes`: before a block is added, the least recently used
blocks are evicted to make room. A lookup or an insert touches a chain deepest block
first, so a parent is always more recent than its children and eviction removes leaves
before the blocks they hang from (no unreachable block keeps memory).

Why blocks copied in and out of a sequence's slot rather than shared pages: the slot
cache (kv_cache.py) keeps each sequence contiguous so decode attention reads it in
place; copying a 1000-token prefix (SmolLM2: ~23 MB in bf16) takes a few milliseconds
against hundreds for recomputing it.

Knows tensors and token ids only: the runner copies blocks to and from its slots.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count

import torch

BlockKey = tuple[object, tuple[int, ...]]  # (parent block id or the namespace, tokens)
#: (start, end) -> keys and values of positions [start, end) of a sequence, copied
BlockReader = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(eq=False)
class PrefixBlock:
    id: int
    key: BlockKey
    k: torch.Tensor  # [layers, kv_heads, block_tokens, head_dim]
    v: torch.Tensor

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class PrefixCache:
    """Blocks of prompt keys/values under a byte budget, least recently used evicted."""

    def __init__(self, budget_bytes: int, block_tokens: int) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.budget_bytes = budget_bytes
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[BlockKey, PrefixBlock] = OrderedDict()  # oldest first
        self._ids = count()
        self.nbytes = 0
        self.hit_tokens = 0  # prompt tokens served from the cache so far
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, namespace: str, tokens: Sequence[int], limit: int) -> list[PrefixBlock]:
        """The longest chain of cached blocks that starts `tokens`, within its first
        `limit` tokens (the caller keeps at least one token to compute logits from)."""
        chain = self._chain(namespace, tokens[:max(0, limit)])
        self._touch(chain)
        self.hit_tokens += len(chain) * self.block_tokens
        return chain

    def insert(self, namespace: str, tokens: Sequence[int], read: BlockReader) -> int:
        """Store every full block of `tokens` not cached yet; `read(start, end)` gives
        the keys/values of positions [start, end) as `[layers, kv_heads, n, head_dim]`
        copies. Room is made before each block, so the cache never holds more than its
        budget, even for a moment; blocks of this chain are never evicted for it (the
        insert stops instead). Returns the blocks added."""
        size = self.block_tokens
        chain = self._chain(namespace, tokens)
        self._touch(chain)
        parent: object = chain[-1].id if chain else namespace
        added = 0
        for i in range(len(chain), len(tokens) // size):
            k, v = read(i * size, (i + 1) * size)
            block = PrefixBlock(next(self._ids), (parent, tuple(tokens[i * size:(i + 1) * size])),
                                k, v)
            if not self._make_room(block.nbytes, keep=chain):
                break
            self._blocks[block.key] = block
            self.nbytes += block.nbytes
            chain.append(block)
            parent = block.id
            added += 1
        self._touch(chain)  # old blocks and new: the most recent now, parents last
        return added

    def _make_room(self, nbytes: int, keep: list[PrefixBlock]) -> bool:
        """Evict least recently used blocks until `nbytes` more fit; False when only
        blocks of `keep` are left to evict."""
        kept = {id(block) for block in keep}
        while self.nbytes + nbytes > self.budget_bytes:
            if not self._blocks:
                return False
            key, oldest = next(iter(self._blocks.items()))
            if id(oldest) in kept:
                return False
            del self._blocks[key]
            self.nbytes -= oldest.nbytes
            self.evicted_blocks += 1
        return True

    def _chain(self, namespace: str, tokens: Sequence[int]) -> list[PrefixBlock]:
        """The cached blocks that start `tokens`, from the root, as far as they go."""
        size, chain = self.block_tokens, []
        parent: object = namespace
        for i in range(len(tokens) // size):
            block = self._blocks.get((parent, tuple(tokens[i * size:(i + 1) * size])))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        return chain

    def _touch(self, chain: list[PrefixBlock]) -> None:
        for block in reversed(chain):  # deepest first: parents end up more recent
            if block.key in self._blocks:
                self._blocks.move_to_end(block.key)

    def clear(self) -> None:
        self._blocks.clear()
        self.nbytes = 0
