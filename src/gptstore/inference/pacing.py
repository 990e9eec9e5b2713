"""Chunked prefill, paced: how many prompt tokens one step may prefill while other
sequences are decoding.

Every running stream waits for the whole step before its next token, so a step that
prefills 512 prompt tokens (SmolLM2 on 2 cores: a few hundred ms) stalls 15 streams whose
decode step alone takes tens of ms. The pacer measures, per base model, what a step
costs: an average decode-only step, and the seconds each prefill token adds on top. While
anyone decodes, it allows as many prompt tokens as add about `ratio` x a decode step, so a
stream's gap between tokens stays near (1 + ratio) x its gap without the newcomer; when
nobody decodes, the full `max_step_tokens` (the newcomer alone waits, so the biggest
chunk is fastest). Before anything is measured the chunk is `start_tokens`.

The chunk never drops below `min_tokens`, so a long prompt still makes progress on a
machine where a single token costs more than a decode step. It was 32: on an AVX2-only
EPYC serving fp32 (a prompt token ~4.5 ms, a 15-row decode step ~80 ms) the pacer
asked for ~13 tokens and the floor made it 32, and the streams' gap p95 grew 3.9x
while a 2,000-token prompt was read. Then 8, and now 4: on an AMX Sapphire Rapids VM
whose 15 streams decode in ~21 ms steps, a token late in a 2,000-token prompt costs
~3.5 ms in attention alone (it reads the ~2,000 cached positions in each of 30 layers),
so the pacer asks for ~5: with 8 tokens the gap p95 read 2.26x (the long prompt's first
token after 6.6 s), with 4 1.76x and 1.82x (5.9 and 6.0 s) in two runs of
`serve_latency.py` (f).

A short prompt (at most `whole_tokens` still to compute: a chat turn, or the new part
of one behind a cached prefix) is not paced: it is prefilled whole in the next step, as
long as the step's prompt tokens stay within `max_tokens`. Pacing exists for long
prompts, whose chunks would otherwise stall the streams for many steps; splitting a
short one only delays its own first token. Measured in the engine on an AMX Sapphire
Rapids, 16 chat requests (34-40 tokens each) submitted at once: pacing them all gave
time to first token p50 0.63 s / p95 1.04 s at 349 tok/s; with this rule 0.22 / 0.27 s
at 415 tok/s (unpaced: 0.17 / 0.25 s). A long prompt's last chunk is not a short prompt:
once chunked, a prompt stays paced to its end (`Sequence.chunked`). The cost falls on
the streams already decoding, once per arrival: 64 tokens add ~30 ms to a ~35 ms step
there, ~290 ms to an ~80 ms fp32 step on an AVX2-only EPYC.

Where the runner's steps change kernels at a row count (`fast_rows`: the native GEMV
serves steps up to `MachineProfile.gemv_rows` rows, the batched products larger ones),
a chunk beside decoding rows stays within it while that leaves at least `min_tokens`:
past it, a step costs a jump the per-token model above does not hold, and chunks sized
on one side of it measure the other. On an AMX Sapphire Rapids VM whose native AMX
steps served up to 64 rows, 15 streams decoding in 21 ms steps and a chunk beside them
(the runner alone, chunks at position 0): 8 tokens 26 ms, 49 tokens 38.5 ms within the
64 rows, where such a step is one native call (models/base.py `ONE_CALL_CHUNK_TOKENS`),
64 tokens 59.8 ms past them.

Only the size of the chunks changes, never what is computed: chunked and whole prompts
give the same tokens (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

#: exponential moving average weight of the newest measurement
SMOOTHING = 0.3


@dataclass
class PrefillPacer:
    max_tokens: int  # EngineConfig.max_step_tokens
    ratio: float = 0.8  # prefill time per step, as a multiple of a decode step
    min_tokens: int = 4
    start_tokens: int = 64
    whole_tokens: int = 64  # a prompt with at most this many left is prefilled whole
    decode_step_s: float | None = None  # average step with decode rows only
    token_s: float | None = None  # average seconds one prefill token adds to a step
    fast_rows: int | None = None  # the most rows of a step on the faster kernel, if any

    def budget(self, decoding: int) -> int:
        """Prompt tokens the next step may prefill while `decoding` sequences decode."""
        if decoding == 0:
            return self.max_tokens
        if self.decode_step_s is None or self.token_s is None or self.token_s <= 0:
            tokens = self.start_tokens
        else:
            tokens = max(self.min_tokens, int(self.ratio * self.decode_step_s / self.token_s))
        if self.fast_rows is not None and self.fast_rows - decoding >= self.min_tokens:
            tokens = min(tokens, self.fast_rows - decoding)  # the step stays on its kernel
        return max(1, min(self.max_tokens, tokens))

    def takes_whole(self, remaining: int, step_tokens: int) -> bool:
        """Whether a prompt with `remaining` tokens still to compute is prefilled whole
        in a step that already holds `step_tokens` prompt tokens, whatever the budget."""
        return remaining <= self.whole_tokens and step_tokens + remaining <= self.max_tokens

    def observe(self, seconds: float, prefill_tokens: int, decode_rows: int) -> None:
        """A step ran: `seconds` for `prefill_tokens` prompt tokens and `decode_rows`
        one-token rows."""
        if prefill_tokens == 0:
            if decode_rows:
                self.decode_step_s = _average(self.decode_step_s, seconds)
            return
        # what a decode-only step costs is the step's fixed part (every weight read once,
        # per-layer overheads) whether or not rows decode in it: what remains is what the
        # prompt tokens added. Without that baseline yet, a short prefill-only step
        # charges its fixed part to its tokens: an overestimate, so chunks start small
        # and grow as decode steps are measured.
        per_token = max(seconds - (self.decode_step_s or 0.0), 0.0) / prefill_tokens
        self.token_s = _average(self.token_s, per_token)


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new
