"""How many intra-op threads a base's steps run with, checked on the steps themselves.

A base starts with what `precision.step_threads` measured when it loaded: a few
projections of its shapes, one thread against the engine's threads. That measurement
takes a tenth of a second at one moment, and a moment can mislead: on an AVX2-only EPYC
(2 cores), one load in six measured two threads no faster than one (2.57 against 2.38 ms,
where the other five measured 1.4-2.1x), and SmolLM2 then decoded at 52-57 tok/s for as
long as it stayed loaded, against 78-98 on two threads (scratch `probe2.py`, 2026-12-07).
A neighbour process that comes later turns the answer the other way: two OpenMP threads
wait on each other at every barrier while one of them is descheduled (docs/design.md,
"Threads").

So the engine checks the choice on its real steps: after `first_check` decode-only steps
of the base, and every `every` after that, it runs `samples` steps on each side, one
thread and the engine's threads alternating, all decode-only with the same number of
rows (steps with prompt tokens, or with another count of rows, are not compared), and
keeps the engine's threads where their median step is at least `margin` times faster
than one thread's, as the load-time measurement decides. A check costs a few steps on
the slower side: with two threads 1.7x faster, 5 one-thread steps in 1,024 add 0.3%.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

from gptstore.inference.precision import THREADS_MARGIN

log = logging.getLogger(__name__)


@dataclass
class StepThreads:
    chosen: int  # the threads the base's steps run with now
    most: int = 1  # the engine's threads: the other side of a check
    checked: bool = True  # False where the threads were configured: they stay
    margin: float = THREADS_MARGIN  # the load-time measurement's rule
    first_check: int = 32  # decode-only steps before the first check
    every: int = 1024  # decode-only steps between checks
    samples: int = 5  # steps timed on each side of a check
    checks: int = 0  # checks decided so far
    _since: int = 0  # decode-only steps on `chosen` since the last check
    _rows: int | None = None  # the decode rows the check in progress compares
    _times: dict[int, list[float]] = field(default_factory=dict)
    _steps: int = 0  # steps seen by the check in progress

    @property
    def checking(self) -> bool:
        return self._rows is not None

    def next(self, prefill_tokens: int, decode_rows: int) -> int:
        """The threads of a step of `prefill_tokens` prompt tokens and `decode_rows`
        one-token rows: `chosen`, but during a check a step it compares runs on the
        side with fewer samples so far (the side not chosen on a tie)."""
        if self._rows is None or not _comparable(prefill_tokens, decode_rows):
            return self.chosen
        other = self.most if self.chosen == 1 else 1
        if decode_rows != self._rows:  # observe() starts the check over on these rows
            return other
        return min((other, self.chosen), key=lambda n: len(self._times[n]))

    def observe(self, threads: int, seconds: float, prefill_tokens: int,
                decode_rows: int) -> None:
        """A step ran on `threads` threads: `seconds` for `prefill_tokens` prompt tokens
        and `decode_rows` one-token rows."""
        if not self.checked or self.most <= 1:
            return
        comparable = _comparable(prefill_tokens, decode_rows)
        if self._rows is None:
            if comparable and threads == self.chosen:
                self._since += 1
                if self._since >= (self.first_check if self.checks == 0 else self.every):
                    self._start(decode_rows)
            return
        self._steps += 1
        if comparable:
            if decode_rows != self._rows:  # other rows: compare those instead
                self._start(decode_rows)
            self._times[threads].append(seconds)
        if all(len(t) >= self.samples for t in self._times.values()):
            self._decide()
        elif self._steps > 8 * self.samples:  # too few comparable steps: try later
            self._rows, self._since = None, 0

    def _start(self, rows: int) -> None:
        self._rows, self._steps = rows, 0
        self._times = {1: [], self.most: []}

    def _decide(self) -> None:
        one = statistics.median(self._times[1])
        many = statistics.median(self._times[self.most])
        chosen = self.most if one >= self.margin * many else 1
        if chosen != self.chosen:
            log.info("steps of %d decode rows: %.1f ms on 1 thread, %.1f ms on %d; now on %d",
                     self._rows, one * 1e3, many * 1e3, self.most, chosen)
        self.chosen, self.checks = chosen, self.checks + 1
        self._rows, self._since = None, 0


def _comparable(prefill_tokens: int, decode_rows: int) -> bool:
    """Whether a step is one a check compares: decode rows only."""
    return prefill_tokens == 0 and decode_rows > 0
