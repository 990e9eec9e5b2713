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

What a decode-only step costs depends on how many rows decode in it (on an AVX2-only
EPYC serving fp32: one row ~15 ms, 15 rows 50-70 ms), so the pacer keeps it per count of
decoding rows, and a count it has not measured yet (or not for `refresh_steps` steps
with prompt tokens: the streams' positions, and so their attention, grow meanwhile) gets
one step without prompt tokens first, which measures it. It kept one average over every
count: measured on a warm-up's 1-row steps and applied to 15 streams, the decode step
read 14.7 ms where it took ~70, each prompt token seemed to cost 15-21 ms against ~2-4,
and a 2,000-token prompt arriving as the 15 streams began was read 4 tokens a step, its
first token after 32.6-43.5 s (the engine on that EPYC, scratch `tracef.py`; a
simulation on its measured step costs: 41-50 s, against 23 s with each count's own
baseline, docs/design.md). A count whose probe step took prompt tokens anyway (short
prompts are taken whole) is not probed again until a decode-only step comes: its last
measurement, or the nearest count's, stands in, so a long prompt is never held back
more than one step for it.

Only the size of the chunks changes, never what is computed: chunked and whole prompts
give the same tokens (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: exponential moving average weight of the newest measurement
SMOOTHING = 0.3


@dataclass
class PrefillPacer:
    max_tokens: int  # EngineConfig.max_step_tokens
    ratio: float = 0.8  # prefill time per step, as a multiple of a decode step
    min_tokens: int = 4
    start_tokens: int = 64
    whole_tokens: int = 64  # a prompt with at most this many left is prefilled whole
    token_s: float | None = None  # average seconds one prefill token adds to a step
    fast_rows: int | None = None  # the most rows of a step on the faster kernel, if any
    refresh_steps: int = 64  # steps with prompt tokens after which a count is re-measured
    #: average decode-only step by the number of rows decoding in it
    decode_steps: dict[int, float] = field(default_factory=dict)
    #: per count of decoding rows: steps with prompt tokens since its last decode-only
    #: step, and whether a step meant to measure it took prompt tokens anyway
    _mixed: dict[int, int] = field(default_factory=dict)
    _missed: set[int] = field(default_factory=set)

    def budget(self, decoding: int) -> int:
        """Prompt tokens the next step may prefill while `decoding` sequences decode: 0
        where that count's decode-only step is to be measured first."""
        if decoding == 0:
            return self.max_tokens
        due = decoding not in self.decode_steps or \
            self._mixed.get(decoding, 0) >= self.refresh_steps
        if due and decoding not in self._missed:
            return 0
        step_s = self.decode_step(decoding)
        if step_s is None or self.token_s is None or self.token_s <= 0:
            tokens = self.start_tokens
        else:
            tokens = max(self.min_tokens, int(self.ratio * step_s / self.token_s))
        if self.fast_rows is not None and self.fast_rows - decoding >= self.min_tokens:
            tokens = min(tokens, self.fast_rows - decoding)  # the step stays on its kernel
        return max(1, min(self.max_tokens, tokens))

    def decode_step(self, rows: int) -> float | None:
        """The decode-only step of `rows` rows as measured, else of the nearest count
        measured (the fewer rows on a tie), else None."""
        if rows in self.decode_steps:
            return self.decode_steps[rows]
        if not self.decode_steps:
            return None
        return self.decode_steps[min(self.decode_steps, key=lambda n: (abs(n - rows), n))]

    def takes_whole(self, remaining: int, step_tokens: int) -> bool:
        """Whether a prompt with `remaining` tokens still to compute is prefilled whole
        in a step that already holds `step_tokens` prompt tokens, whatever the budget."""
        return remaining <= self.whole_tokens and step_tokens + remaining <= self.max_tokens

    def observe(self, seconds: float, prefill_tokens: int, decode_rows: int) -> None:
        """A step ran: `seconds` for `prefill_tokens` prompt tokens and `decode_rows`
        one-token rows."""
        if prefill_tokens == 0:
            if decode_rows:
                self.decode_steps[decode_rows] = _average(self.decode_steps.get(decode_rows),
                                                          seconds)
                self._mixed[decode_rows] = 0
                self._missed.discard(decode_rows)
            return
        if decode_rows:
            self._mixed[decode_rows] = self._mixed.get(decode_rows, 0) + 1
            if decode_rows not in self.decode_steps or \
                    self._mixed[decode_rows] > self.refresh_steps:
                self._missed.add(decode_rows)  # its probe took prompt tokens
        # what a decode-only step costs is the step's fixed part (every weight read once,
        # per-layer overheads) whether or not rows decode in it: what remains is what the
        # prompt tokens added. A prefill-only step takes the fewest rows measured as its
        # fixed part; without any yet, it charges that part to its tokens: an
        # overestimate, so chunks start small and grow as decode steps are measured.
        per_token = max(seconds - (self.decode_step(decode_rows) or 0.0), 0.0) / prefill_tokens
        self.token_s = _average(self.token_s, per_token)


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new
