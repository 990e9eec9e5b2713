"""Prefix caching: keys/values of prompt prefixes kept after their request ends, so a
shared system prompt or the history of a chat is computed once and reused.

The unit is a *block* of `block_tokens` consecutive prompt tokens at a block-aligned
position. A block is stored under (its parent block's id, its own tokens), so a block
is found only after the same tokens before it, from position 0: a lookup walks from the
root, block by block, and reuses the longest chain found. The root is a *namespace*
(the adapter serving the request, or "" for the base): an adapter that changes the
key/value projections changes the cached values, so adapters never share blocks.

A lookup that runs out of whole blocks takes part of one more: where a cached block
after the chain starts with the prompt's next tokens but then differs (the choices of
a multiple-choice question after one context, whose end falls inside a block), its
first matching positions are copied too (`PrefixBlock.head`). Keys, values and scores
of a position depend on the tokens up to it only, so a block's first positions serve
any prompt that shares them; only whole blocks are stored.

Memory is bounded by `budget_bytes`: before a block is added, the least recently used
blocks are evicted to make room. A lookup or an insert touches a chain deepest block
first, so a parent is always more recent than its children and eviction removes leaves
before the blocks they hang from (no unreachable block keeps memory).

Why blocks copied in and out of a sequence's slot rather than shared pages: the slot
cache (kv_cache.py) keeps each sequence contiguous so decode attention reads it in
place; copying a 1000-token prefix (SmolLM2: ~23 MB in bf16) takes a few milliseconds
against hundreds for recomputing it.

A block stored by a scored prompt (`SamplingParams.prompt_logprobs`) also keeps its
tokens' scores (`BlockScores`: each token's logprob given the ones before it and the k
most likely tokens there), so a later scored prompt that shares the prefix reuses the
scores as well as the keys/values: lm-evaluation-harness scores every choice of a
multiple-choice question as its own prompt, context included. Scores of a prefix depend
on its tokens only, like its keys/values. vLLM recomputes such prompts whole (its prefix
cache is off for `prompt_logprobs`); 4 + 8k bytes a token (12 for k = 1, against
SmolLM2's ~23 KB of bf16 keys/values) make the reuse possible.

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


@dataclass(frozen=True)
class BlockScores:
    """The scores of a block's tokens, one row per token: its logprob given the tokens
    before it (NaN for a prompt's first token, which has none) and the `k` most likely
    tokens at its position, best first."""

    logprobs: torch.Tensor  # [n] float32
    top_ids: torch.Tensor  # [n, k] int32
    top_logprobs: torch.Tensor  # [n, k] float32

    @property
    def k(self) -> int:
        return self.top_ids.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.logprobs, self.top_ids, self.top_logprobs))


#: (start, end) -> the scores of positions [start, end) of a scored prompt
ScoresReader = Callable[[int, int], BlockScores]


@dataclass(eq=False)
class PrefixBlock:
    id: int
    key: BlockKey
    k: torch.Tensor  # [layers, kv_heads, block_tokens, head_dim]
    v: torch.Tensor
    scores: BlockScores | None = None  # kept where a scored prompt stored the block

    @property
    def n_tokens(self) -> int:
        return len(self.key[1])

    @property
    def nbytes(self) -> int:
        scores = self.scores.nbytes if self.scores is not None else 0
        return 2 * self.k.numel() * self.k.element_size() + scores

    def scored(self, k: int | None) -> bool:
        """Whether the block serves a prompt that wants scores with `k` alternatives
        (None: no scores wanted)."""
        return k is None or (self.scores is not None and self.scores.k >= k)

    def head(self, n: int) -> PrefixBlock:
        """Its first `n` positions, as a block of their own (views, not stored)."""
        scores = self.scores
        if scores is not None:
            scores = BlockScores(scores.logprobs[:n], scores.top_ids[:n],
                                 scores.top_logprobs[:n])
        parent, tokens = self.key
        return PrefixBlock(self.id, (parent, tokens[:n]), self.k[:, :, :n], self.v[:, :, :n],
                           scores)


class PrefixCache:
    """Blocks of prompt keys/values under a byte budget, least recently used evicted."""

    def __init__(self, budget_bytes: int, block_tokens: int) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.budget_bytes = budget_bytes
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[BlockKey, PrefixBlock] = OrderedDict()  # oldest first
        # parent -> first token -> the blocks under it: where a lookup's whole blocks end,
        # the ones that may share its next few tokens
        self._children: dict[object, dict[int, list[PrefixBlock]]] = {}
        self._ids = count()
        self.nbytes = 0
        self.hit_tokens = 0  # prompt positions served from the cache so far
        self.evicted_blocks = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, namespace: str, tokens: Sequence[int], limit: int,
               scores: int | None = None) -> list[PrefixBlock]:
        """The longest chain of cached blocks that starts `tokens`, within its first
        `limit` tokens (the caller keeps at least one token to compute logits from),
        ended by the first positions of a block that shares only those with the
        tokens after the chain (`PrefixBlock.head`); with `scores`, only as far as the
        blocks keep scores with that many alternatives."""
        tokens = tokens[:max(0, limit)]
        chain = self._chain(namespace, tokens, scores)
        served = [*chain]
        parent: object = chain[-1].id if chain else namespace
        part = self._partial(parent, tokens[len(chain) * self.block_tokens:], scores)
        if part is not None:
            block, n = part
            served.append(block.head(n))
            chain.append(block)  # touched with the chain: it serves this prompt too
        self._touch(chain)
        # a scored prompt computes the chain's last position again (its logits score
        # the token after the chain): that one is not served from the cache
        self.hit_tokens += sum(b.n_tokens for b in served) - (scores is not None and
                                                              bool(served))
        return served

    def cached_blocks(self, namespace: str, tokens: Sequence[int],
                      scores: int | None = None) -> int:
        """How many blocks of `tokens` a lookup would find now (nothing is touched)."""
        return len(self._chain(namespace, tokens, scores))

    def insert(self, namespace: str, tokens: Sequence[int], read: BlockReader,
               read_scores: ScoresReader | None = None) -> int:
        """Store every full block of `tokens` not cached yet; `read(start, end)` gives
        the keys/values of positions [start, end) as `[layers, kv_heads, n, head_dim]`
        copies, `read_scores(start, end)` (a scored prompt) their scores, which cached
        blocks without them (or with fewer alternatives) take too. Room is made before
        each block, so the cache never holds more than its budget, even for a moment;
        blocks of this chain are never evicted for it (the insert stops instead).
        Returns the blocks added."""
        size = self.block_tokens
        chain = self._chain(namespace, tokens)
        self._touch(chain)
        if read_scores is not None:
            for i, block in enumerate(chain):
                scores = read_scores(i * size, (i + 1) * size)
                if not block.scored(scores.k):
                    self._add_scores(block, read(i * size, (i + 1) * size), scores,
                                     keep=chain)
        parent: object = chain[-1].id if chain else namespace
        added = 0
        for i in range(len(chain), len(tokens) // size):
            k, v = read(i * size, (i + 1) * size)
            scores = read_scores(i * size, (i + 1) * size) if read_scores else None
            block = PrefixBlock(next(self._ids), (parent, tuple(tokens[i * size:(i + 1) * size])),
                                k, v, scores)
            if not self._make_room(block.nbytes, keep=chain):
                break
            self._blocks[block.key] = block
            self._children.setdefault(parent, {}).setdefault(block.key[1][0], []) \
                .append(block)
            self.nbytes += block.nbytes
            chain.append(block)
            parent = block.id
            added += 1
        self._touch(chain)  # old blocks and new: the most recent now, parents last
        return added

    def _add_scores(self, block: PrefixBlock, kv: tuple[torch.Tensor, torch.Tensor],
                    scores: BlockScores, keep: list[PrefixBlock]) -> None:
        """Give a cached block a scored prompt's scores, room allowing, and its
        keys/values with them: the block's own may come from a step of a few rows on a
        lower-precision copy of the weights, which a scored step does not use
        (models/base.py, `_EXACT_STEP`), and the scores must go with the keys/values
        they were computed with."""
        extra = scores.nbytes - (block.scores.nbytes if block.scores is not None else 0)
        if self._make_room(extra, keep):
            block.k, block.v = kv
            block.scores = scores
            self.nbytes += extra

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
            self._unlink(oldest)
            self.nbytes -= oldest.nbytes
            self.evicted_blocks += 1
        return True

    def _unlink(self, block: PrefixBlock) -> None:
        """Drop an evicted block from its parent's children (a leaf: it has none)."""
        parent, tokens = block.key
        by_first = self._children.get(parent)
        if by_first is None:
            return
        siblings = by_first.get(tokens[0], [])
        if block in siblings:
            siblings.remove(block)
        if not siblings:
            by_first.pop(tokens[0], None)
        if not by_first:
            del self._children[parent]
        self._children.pop(block.id, None)

    def _partial(self, parent: object, tokens: Sequence[int],
                 scores: int | None) -> tuple[PrefixBlock, int] | None:
        """The cached block under `parent` that shares the most of `tokens`' first
        positions, fewer than a whole block (a whole one is the chain's), and how many;
        None where none shares the first."""
        if not tokens:
            return None
        best: tuple[PrefixBlock, int] | None = None
        most = min(len(tokens), self.block_tokens - 1)
        for block in self._children.get(parent, {}).get(tokens[0], []):
            if not block.scored(scores):
                continue
            cached, n = block.key[1], 1
            while n < most and cached[n] == tokens[n]:
                n += 1
            if best is None or n > best[1]:
                best = (block, n)
        return best

    def _chain(self, namespace: str, tokens: Sequence[int],
               scores: int | None = None) -> list[PrefixBlock]:
        """The cached blocks that start `tokens`, from the root, as far as they go (and
        keep scores with `scores` alternatives, where asked)."""
        size, chain = self.block_tokens, []
        parent: object = namespace
        for i in range(len(tokens) // size):
            block = self._blocks.get((parent, tuple(tokens[i * size:(i + 1) * size])))
            if block is None or not block.scored(scores):
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
        self._children.clear()
        self.nbytes = 0
