"""A run's logs: TensorBoard event files, `metrics.jsonl`, and events for front ends.

`RunLog` writes every scalar twice: to `RUN/metrics.jsonl` (one JSON object per line:
`{"step", "split", "time", ...values}`, easy to read back or tail) and to TensorBoard
event files under `RUN/tensorboard/` (`tensorboard --logdir RUN`). On resume, entries
after the checkpoint's step are dropped from both, so the logs of a resumed run read
as one uninterrupted run.

Front ends follow a run through `TrainEvent`s passed to callbacks (the CLI's rich
progress bar, a job worker's status updates); a callback that raises stops the run
(the loop lets the exception through, its last checkpoint stays for `--resume`).
No rich, no HTTP here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class TrainEvent:
    """One thing that happened in a run.

    kind: "start" (setup done), "step" (an optimiser step), "eval" (a validation),
    "checkpoint", "end" (published). `values` holds the numbers of the event (loss, lr,
    tokens_per_second, eta_seconds, validation metrics, ...).
    """

    kind: str
    step: int
    total_steps: int
    epoch: int
    values: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[TrainEvent], None]


class RunLog:
    """Writes metrics.jsonl and TensorBoard events for one run and relays events."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.run_dir = run_dir
        self.callbacks = list(callbacks)
        self.path = run_dir / METRICS_FILE
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            _truncate_after(self.path, resume_step)
        self._writer: Any = None
        self._resume_step = resume_step

    @property
    def writer(self) -> Any:
        """TensorBoard's SummaryWriter, created on first use (imports tensorboard)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.run_dir / TENSORBOARD_DIR
            if self._resume_step is None and folder.exists():
                for old in folder.glob("events.out.tfevents.*"):
                    old.unlink()
            # purge_step drops events a killed run wrote after its last checkpoint
            purge = None if self._resume_step is None else self._resume_step + 1
            self._writer = SummaryWriter(str(folder), purge_step=purge)
        return self._writer

    def scalars(self, split: str, step: int, values: dict[str, Any]) -> None:
        numbers = {k: v for k, v in values.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "split": split, "time": round(time.time(), 3),
                                     **numbers}) + "\n")
        for key, value in numbers.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def text(self, tag: str, value: str) -> None:
        self.writer.add_text(tag, value, 0)

    def emit(self, event: TrainEvent) -> None:
        for callback in self.callbacks:
            callback(event)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    path.write_text("".join(f"{line}\n" for line in kept))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of a run's metrics.jsonl."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
