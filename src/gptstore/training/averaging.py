"""An exponential moving average (EMA) of the trained weights.

With `ema_decay` set, the loop keeps, beside the weights the optimiser moves, an average
of them over the last ~1 / (1 - decay) optimiser steps, and validates, keeps as the best
and publishes that average instead. Averaging the iterates of a noisy small-batch run
lands in a flatter, better-generalising point than the last step (Izmailov et al. 2018,
SWA; Lu et al. 2022 for fine-tuning language models; Morales-Brotons et al. 2024 for the
EMA form used here); it costs one fused lerp over the trainable weights a step (an
adapter's few MB for LoRA).

The early steps use a shorter horizon, min(decay, (1 + n) / (10 + n)) after n updates
(TensorFlow's `ExponentialMovingAverage(num_updates=...)`), so the average does not drag
the starting weights along for the first ~1 / (1 - decay) steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from gptstore.errors import StorageError


class WeightAverage:
    """The average of the trainable weights `named` (name, parameter), in their dtype."""

    def __init__(self, named: Sequence[tuple[str, torch.nn.Parameter]], decay: float) -> None:
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone() for p in self.params]

    def update(self) -> None:
        """Fold the weights of the step just taken into the average."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    def _exchange(self) -> None:
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow, strict=True):
                held = param.detach().clone()
                param.copy_(shadow)
                shadow.copy_(held)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block, its trained weights after."""
        self._exchange()
        try:
            yield
        finally:
            self._exchange()

    def apply(self) -> None:
        """The model holds the average from now on (the end of a run)."""
        with torch.no_grad():
            for param, shadow in zip(self.params, self.shadow, strict=True):
                param.copy_(shadow)

    # -- checkpoints: the average and its update count, by the weights' names ------------

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"ema.{n}": s.contiguous()
                   for n, s in zip(self.names, self.shadow, strict=True)}
        tensors["ema_updates"] = torch.tensor(self.updates)
        return tensors

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = [n for n in [*(f"ema.{n}" for n in self.names), "ema_updates"]
                   if n not in tensors]
        if missing:
            raise StorageError(f"the checkpoint's weight average lacks {len(missing)} "
                               f"tensors (e.g. {missing[0]}); it belongs to another run: "
                               "start a new one")
        with torch.no_grad():
            for name, shadow in zip(self.names, self.shadow, strict=True):
                shadow.copy_(tensors[f"ema.{name}"])
        self.updates = int(tensors["ema_updates"])
