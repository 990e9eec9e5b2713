"""Hyper-parameter search: `sweep(config, trials=N)` runs N fine-tunes chosen by Optuna
and publishes the best one under `config.name`, the sweep in its lineage.

1. the search space (`SearchSpace`): learning rate (log scale around the method's auto
   value), epochs, batch size, LoRA rank and targets, weight decay, dropout; any
   dimension can be fixed by leaving it out;
2. each trial is a run of its own (`<name>-trial-<k>`, its folder under the sweep's,
   with its TensorBoard logs); every validation is reported to Optuna, and the median
   pruner stops a trial whose validation metric is below the median of earlier trials
   at the same step (a callback that raises stops the run: nothing is published);
3. Optuna's TPE sampler proposes the next trial from the finished ones;
4. the best trial's version is published again as `config.name` with
   `lineage.sweep` (every trial's parameters, value and state) and a plot of the
   metric against each parameter (`sweep.svg`, also saved in the sweep folder); the
   trial models are removed (their logs stay).

Trials are compared by the validation metric of the config (`metric`, auto: accuracy
for classification, loss for causal-lm) of the published weights, so a sweep needs a
validation set (a file or the auto split).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptstore.errors import InvalidRequest
from gptstore.settings import Settings
from gptstore.tasks import CLASSIFICATION
from gptstore.training.config import (
    ALL_LINEAR,
    ATTENTION,
    AUTO,
    AUTO_LEARNING_RATES,
    TrainConfig,
)
from gptstore.training.logs import TrainEvent
from gptstore.training.sweep_plot import trials_svg

if TYPE_CHECKING:  # the catalog (SQLAlchemy) is imported where a sweep runs, not by the CLI's start
    from gptstore.catalog.repository import Catalog, VersionInfo

#: the dimensions a sweep can search, and what each means
DIMENSIONS = ("learning_rate", "epochs", "batch_size", "lora_r", "lora_target",
              "weight_decay", "dropout")


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of each searched hyper-parameter (log scale for the learning rate)."""

    dimensions: tuple[str, ...] = DIMENSIONS
    lr_range: tuple[float, float] | None = None  # None: auto value / 10 .. x 10
    epochs: tuple[int, int] = (1, 5)
    batch_sizes: tuple[int, ...] = (8, 16, 32)
    lora_ranks: tuple[int, ...] = (4, 8, 16, 32)
    lora_targets: tuple[str, ...] = (ATTENTION, ALL_LINEAR)
    weight_decay: tuple[float, float] = (0.0, 0.1)
    dropout: tuple[float, float] = (0.0, 0.2)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.dimensions) - set(DIMENSIONS))
        if unknown:
            raise InvalidRequest(f"cannot search {unknown}; searchable: {', '.join(DIMENSIONS)}",
                                 param="space")

    def suggest(self, trial: Any, config: TrainConfig) -> dict[str, Any]:
        """One trial's hyper-parameters (the config's values for unsearched ones)."""
        chosen: dict[str, Any] = {}
        dims = set(self.dimensions)
        if config.method != "lora":
            dims -= {"lora_r", "lora_target"}
        if "learning_rate" in dims:
            low, high = self.lr_range or _lr_range(config)
            chosen["learning_rate"] = trial.suggest_float("learning_rate", low, high, log=True)
        if "epochs" in dims:
            chosen["epochs"] = trial.suggest_int("epochs", *self.epochs)
        if "batch_size" in dims:
            chosen["batch_size"] = trial.suggest_categorical("batch_size",
                                                             list(self.batch_sizes))
        if "lora_r" in dims:
            chosen["lora_r"] = trial.suggest_categorical("lora_r", list(self.lora_ranks))
        if "lora_target" in dims:
            chosen["lora_target"] = trial.suggest_categorical("lora_target",
                                                              list(self.lora_targets))
        if "weight_decay" in dims:
            chosen["weight_decay"] = trial.suggest_float("weight_decay", *self.weight_decay)
        if "dropout" in dims:
            key = "lora_dropout" if config.method == "lora" else "dropout"
            chosen[key] = trial.suggest_float(key, *self.dropout)
        return chosen


def _lr_range(config: TrainConfig) -> tuple[float, float]:
    task = config.task if config.task != AUTO else "causal-lm"
    centre = float(config.learning_rate) if config.learning_rate != AUTO else \
        AUTO_LEARNING_RATES.get((config.method, task), 2e-4)
    return centre / 10, centre * 10


@dataclass(frozen=True)
class TrialResult:
    number: int
    state: str  # "complete", "pruned", "failed"
    params: dict[str, Any]
    value: float | None
    run_dir: str
    error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    name: str
    ref: str  # the published best trial
    metric: str
    higher_is_better: bool
    best: TrialResult
    trials: tuple[TrialResult, ...] = field(default_factory=tuple)
    plot: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "best": asdict(self.best),
                "trials": [asdict(t) for t in self.trials], "plot": self.plot}


class _Pruned(Exception):
    """Raised from the run's callback to stop a trial the pruner gave up on."""


def sweep(config: TrainConfig, *, trials: int, space: SearchSpace | None = None,
          settings: Settings | None = None, catalog: Catalog | None = None,
          seed: int = 0, on_trial: Callable[[TrialResult], None] | None = None
          ) -> SweepResult:
    """Run `trials` fine-tunes proposed by TPE, prune by median, publish the best."""
    import optuna

    from gptstore.catalog.repository import Catalog
    from gptstore.training.loop import finetune
    from gptstore.training.prepare import task_of

    if trials < 1:
        raise InvalidRequest(f"trials must be >= 1, got {trials}", param="trials")
    settings = settings or (catalog.settings if catalog is not None else Settings())
    own = catalog is None
    catalog = catalog or Catalog(settings)
    space = space or SearchSpace()
    try:
        if catalog.exists(config.name):
            raise InvalidRequest(f"model {config.name} already exists: choose another --name",
                                 param="name")
        ns, model = config.name.split("/", 1)
        root = Path(config.run_dir) if config.run_dir else \
            settings.runs_dir / f"{ns}--{model}--sweep"
        root.mkdir(parents=True, exist_ok=True)
        # the task the trials will train (from the file where it is auto), so that a
        # classifier's sweep ranks by accuracy, as its runs' auto metric does
        task = task_of(config, Path(config.train_file)) if Path(config.train_file).is_file() \
            else config.task
        metric = config.metric if config.metric != AUTO else (
            "accuracy" if task == CLASSIFICATION else "loss")
        higher = metric in ("accuracy", "macro_f1", "token_accuracy")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize" if higher else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
        results: list[TrialResult] = []
        published: dict[int, VersionInfo] = {}
        for _ in range(trials):
            trial = study.ask()
            params = space.suggest(trial, config)
            run_dir = root / f"trial-{trial.number}"
            shutil.rmtree(run_dir, ignore_errors=True)
            trial_config = replace(config, name=f"{config.name}-trial-{trial.number}",
                                   run_dir=str(run_dir), resume=False, eval_suite=None,
                                   checkpoint_models=0, **params)

            reported: list[float] = []

            def report(event: TrainEvent, trial: Any = trial,
                       reported: list[float] = reported) -> None:
                if event.kind != "eval" or metric not in event.values:
                    return
                reported.append(float(event.values[metric]))
                trial.report(reported[-1], event.step)
                if trial.should_prune():
                    raise _Pruned()

            try:
                run = finetune(trial_config, settings=settings, catalog=catalog,
                               callbacks=[report])
                value = run.record.final.get(metric)
                if value is None:
                    raise InvalidRequest(f"the run has no validation {metric}: a sweep needs "
                                         "a validation set (--valid or valid_split > 0)",
                                         param="valid_split")
                study.tell(trial, float(value))
                published[trial.number] = catalog.resolve(run.ref)
                result = TrialResult(trial.number, "complete", params, float(value),
                                     str(run_dir))
            except _Pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                # a pruned trial shows its last validation (its run stopped there)
                result = TrialResult(trial.number, "pruned", params,
                                     reported[-1] if reported else None, str(run_dir))
            except InvalidRequest:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            results.append(result)
            if on_trial is not None:
                on_trial(result)
        complete = [r for r in results if r.state == "complete"]
        if not complete:
            raise InvalidRequest("every trial was pruned or failed; run more trials",
                                 param="trials")
        best = max(complete, key=lambda r: (r.value or 0.0) * (1 if higher else -1))
        plot = trials_svg(results, metric=metric, dimensions=sorted(
            {k for r in results for k in r.params}))
        (root / "sweep.svg").write_text(plot)
        (root / "sweep.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
        version = _publish_best(catalog, config, published[best.number], results, best,
                                metric, plot)
        for trial_version in published.values():
            catalog.delete_model(trial_version.model)  # logs stay in the trial folders
        return SweepResult(config.name, version.ref, metric, higher, best, tuple(results),
                           str(root / "sweep.svg"))
    finally:
        if own:
            catalog.close()


def _publish_best(catalog: Catalog, config: TrainConfig, version: VersionInfo,
                  results: Sequence[TrialResult], best: TrialResult, metric: str,
                  plot: str) -> VersionInfo:
    """The best trial's files published as `config.name`, the sweep in its lineage."""
    lineage = dict(version.lineage)
    lineage["sweep"] = {
        "metric": metric, "best_trial": best.number, "sampler": "TPE",
        "pruner": "median", "trials": [{"number": r.number, "state": r.state,
                                        "params": r.params, "value": _finite(r.value)}
                                       for r in results]}
    with tempfile.TemporaryDirectory(dir=catalog.settings.tmp_dir
                                     if catalog.settings.tmp_dir.exists() else None) as tmp:
        folder = Path(tmp)
        for entry in version.files:
            if entry.path == "README.md":
                continue
            target = folder / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(catalog.read_file(version, entry.path))
        (folder / "sweep.svg").write_text(plot)
        return catalog.publish(config.name, folder, task=version.task, kind=version.kind,
                               base=version.base, description=config.description,
                               tags=config.tags, license=config.license, lineage=lineage,
                               metrics=version.metrics)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
