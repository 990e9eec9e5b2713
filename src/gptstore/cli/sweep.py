"""`gptstore sweep`: hyper-parameter search with Optuna (TPE, median pruning), the best
trial published (presentation only; `training/sweep.py` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gptstore.cli.common import console, open_catalog, print_json, settings
from gptstore.training.sweep import DIMENSIONS


def sweep(
    base: Annotated[str, typer.Option(help="Base model in the store.")],
    train: Annotated[Path, typer.Option(help="Training file.")],
    name: Annotated[str, typer.Option(help="Name of the best model, namespace/name.")],
    trials: Annotated[int, typer.Option(min=1, help="Fine-tunes to run.")] = 8,
    valid: Annotated[Path | None, typer.Option(help="Validation file (else a split).")] = None,
    task: Annotated[str, typer.Option(help="causal-lm, classification or auto.")] = "auto",
    method: Annotated[str, typer.Option(help="lora, full or head.")] = "lora",
    search: Annotated[str, typer.Option(
        help=f"Comma-separated parameters to search among {','.join(DIMENSIONS)}.")
    ] = ",".join(DIMENSIONS),
    max_steps: Annotated[int | None, typer.Option(help="Cap each trial's steps.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and of every run.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Search learning rate, epochs, batch size, LoRA rank and targets, weight decay and
    dropout; every trial is a run with its TensorBoard logs; the best is published with
    the sweep in its lineage and a plot of the trials (sweep.svg)."""
    from gptstore.training.config import TrainConfig
    from gptstore.training.sweep import SearchSpace
    from gptstore.training.sweep import sweep as run_sweep

    config = TrainConfig(base=base, train_file=str(train), name=name, task=task,
                         method=method, valid_file=str(valid) if valid else None,
                         max_steps=max_steps, seed=seed)
    space = SearchSpace(dimensions=tuple(d.strip() for d in search.split(",") if d.strip()))
    with open_catalog() as catalog:
        result = run_sweep(config, trials=trials, space=space, settings=settings(),
                           catalog=catalog, seed=seed,
                           on_trial=lambda t: console.print(
                               f"trial {t.number}: {t.state}, value {t.value}, {t.params}"))
    if as_json:
        print_json(result.to_dict())
        return
    table = Table("trial", "state", result.metric, "parameters",
                  title=f"published {result.ref} (best: trial {result.best.number})")
    for t in result.trials:
        table.add_row(str(t.number), t.state, "-" if t.value is None else f"{t.value:.4f}",
                      ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in t.params.items()))
    console.print(table)
    console.print(f"plot of the trials: {result.plot}")
