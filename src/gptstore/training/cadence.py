"""When the loop validates: `EvalCadence`.

Two modes, from the config's `eval_every`:

- a number N (or 0): every N optimiser steps (0: never between), at each epoch end and
  at the end of the run, as before;
- `auto`: by time. What a person waits for is the time from the command to a published
  model, and validations measured longer than the training itself (SST-2, 2000
  sentences: 872-sentence validations of 33-50 s each, every 10% of a run whose steps
  took 173 s). So validation may cost at most `budget` (10%) of the run: a validation
  is due when the time already spent validating, plus this one and the final one
  (always run: it picks the published weights), stays within `budget / (1 - budget)`
  of the time spent training so far; and at most about ten times a run
  (`min_steps` apart). Epoch ends still validate, as OpenAI's per-epoch checkpoints
  report validation metrics (a 3-epoch run validates 3 times; SST-2's one-epoch run
  validated 10 times before, at 33-50 s each, and now once plus what the budget allows).

Before the first validation its cost is estimated from the training steps: a forward
pass over the validation tokens at `FORWARD_SHARE` of a training step's time per token
(no backward, no optimiser), and at least `MIN_EVAL_SECONDS`. After each validation
the estimate is the last one measured.

Only the schedule: the loop runs the validations and measures them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: validation's share of the run that `eval_every: auto` aims to stay within
EVAL_BUDGET = 0.10
#: a validation token costs about this fraction of a training token (forward only, no
#: backward or optimiser: a third to a half of a step for LoRA; the larger is assumed)
FORWARD_SHARE = 0.5
#: ... and a validation at least this many seconds: it also saves the best weights and
#: its first pass warms kernels up (tiny test models: 0.2 s for 24 examples, 12 training
#: steps' worth, where the per-token estimate said one)
MIN_EVAL_SECONDS = 1.0


@dataclass
class EvalCadence:
    """Decides after each optimiser step whether to validate now."""

    total_steps: int
    every: int  # explicit eval_every (0: epoch ends only); with `adaptive`, min spacing
    adaptive: bool  # eval_every: auto
    valid_tokens: int  # tokens of the validation set
    budget: float = EVAL_BUDGET
    last_step: int = 0  # step of the last validation
    validation_seconds: float = 0.0  # spent validating so far (this session)
    last_cost: float | None = None  # seconds of the last validation

    @classmethod
    def for_run(cls, *, total_steps: int, eval_every: int, auto: bool,
                valid_tokens: int) -> EvalCadence:
        every = max(1, math.ceil(total_steps / 10)) if auto else eval_every
        return cls(total_steps=total_steps, every=every, adaptive=auto,
                   valid_tokens=valid_tokens)

    def due(self, step: int, *, epoch_end: bool, run_end: bool, train_seconds: float,
            train_tokens: int) -> bool:
        """Whether to validate after optimiser step `step` (1-based).

        `train_seconds` / `train_tokens`: time in training steps and tokens through them
        so far (this session), for the estimate before the first validation.
        """
        if run_end or epoch_end:
            return True
        if not self.adaptive:
            return bool(self.every and step % self.every == 0)
        if step - self.last_step < self.every:
            return False
        cost = self.estimate(train_seconds, train_tokens)
        allowed = self.budget / (1 - self.budget) * train_seconds
        return self.validation_seconds + 2 * cost <= allowed

    def estimate(self, train_seconds: float, train_tokens: int) -> float:
        """Seconds one validation is expected to take."""
        if self.last_cost is not None:
            return self.last_cost
        if train_tokens <= 0:  # head-only on cached features: steps see no tokens
            return MIN_EVAL_SECONDS
        per_token = train_seconds / train_tokens
        return max(MIN_EVAL_SECONDS, FORWARD_SHARE * per_token * self.valid_tokens)

    def record(self, step: int, seconds: float) -> None:
        """A validation ran after `step` and took `seconds`."""
        self.last_step = step
        self.last_cost = seconds
        self.validation_seconds += seconds
