"""The sweep's plot: the validation metric of every trial against each searched
parameter, one panel per parameter, as a standalone SVG.

Written by hand (~80 lines) instead of with matplotlib: the plot is a few scatter
panels, and matplotlib would be a 40 MB dependency for it. Complete trials are filled
dots, pruned trials hollow (their last reported value); log-scale axis for the learning
rate; categorical parameters (batch size, rank, targets) on evenly spaced ticks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

PANEL_W, PANEL_H, PAD = 260, 200, 40


def trials_svg(trials: Sequence[Any], *, metric: str, dimensions: Sequence[str]) -> str:
    """SVG text: one scatter panel per dimension (trials have `params`, `value`, `state`)."""
    dims = list(dimensions) or ["trial"]
    width, height = PANEL_W * len(dims), PANEL_H + 30
    points = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    values = [t.value for t in points] or [0.0, 1.0]
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<text x="4" y="14" font-size="13">{escape(metric)} per trial '
             '(filled: complete, hollow: pruned)</text>']
    for index, dim in enumerate(dims):
        x0 = index * PANEL_W + PAD
        y0, w, h = 30, PANEL_W - PAD - 10, PANEL_H - PAD
        parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" '
                     'stroke="#888"/>')
        parts.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 28}" text-anchor="middle">'
                     f'{escape(dim)}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{y0 + 8}" text-anchor="end">{high:.3g}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{y0 + h}" text-anchor="end">{low:.3g}</text>')
        position = _axis([t.params.get(dim, t.number) if dim != "trial" else t.number
                          for t in points], log=dim == "learning_rate")
        for trial in points:
            raw = trial.params.get(dim, trial.number) if dim != "trial" else trial.number
            px = x0 + 6 + position(raw) * (w - 12)
            py = y0 + h - (trial.value - low) / (high - low) * h
            fill = "#1f77b4" if trial.state == "complete" else "none"
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{fill}" '
                         f'stroke="#1f77b4"><title>trial {trial.number}: '
                         f'{escape(str(raw))} -> {trial.value:.4g}</title></circle>')
        for label, frac in position.ticks:
            parts.append(f'<text x="{x0 + 6 + frac * (w - 12):.1f}" y="{y0 + h + 13}" '
                         f'text-anchor="middle" font-size="9">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


@dataclass
class _Axis:
    """Raw value -> [0, 1] along a panel, and the tick labels to draw."""

    spots: dict[str, float]  # categorical levels
    scale: Callable[[Any], float] | None = None  # continuous axes
    lo: float = 0.0
    span: float = 1.0
    ticks: list[tuple[str, float]] = field(default_factory=list)

    def __call__(self, value: Any) -> float:
        if self.scale is not None:
            return (self.scale(value) - self.lo) / self.span
        return self.spots.get(str(value), 0.5)


def _axis(raw: Sequence[Any], *, log: bool) -> _Axis:
    numeric = [v for v in raw if isinstance(v, int | float) and not isinstance(v, bool)]
    # floats (learning rate, decay, dropout) get a continuous axis; integers and
    # strings (epochs, batch size, rank, targets) one tick per level
    all_numeric = bool(raw) and len(numeric) == len(raw)
    continuous = all_numeric and (log or (len(set(numeric)) > 1 and not all(
        isinstance(v, int) for v in numeric)))
    if continuous:
        scale: Callable[[Any], float] = math.log10 if log else float
        lo, hi = min(map(scale, numeric)), max(map(scale, numeric))
        axis = _Axis({}, scale, lo, (hi - lo) or 1.0)
        levels = sorted(set(numeric))
        axis.ticks = [(f"{v:.2g}", axis(v)) for v in levels[::max(1, len(levels) // 4)]]
        return axis
    names = sorted({str(v) for v in raw}, key=lambda s: (len(s), s))
    spots = {name: (i + 0.5) / max(1, len(names)) for i, name in enumerate(names)}
    return _Axis(spots, ticks=[(name, spots[name]) for name in names])
