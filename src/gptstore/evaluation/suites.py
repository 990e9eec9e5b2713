"""Running suites: add one (or the built-in ones) to the store, evaluate a model on a
suite, and record the result in the catalog.

- `add_suite(catalog, name, data, task=..., metric=..., prompt=...)`: a suite of your
  own from an evaluation file (checked by reading it for its task first);
- `install_builtin(catalog, names, source)`: the built-in suites (`builtin_suites.py`);
- `evaluate_on_suite(catalog, ref, suite)`: `runner.evaluate_data` with the suite's stored
  data and prompt, the result recorded (`catalog.evaluations.Evaluations.record`), so it
  shows in the suite's leaderboard and in the version's card.

Knows no HTTP and no CLI; runs models only through `runner.py`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from gptstore.catalog.evaluations import Evaluations, ResultInfo, SuiteInfo
from gptstore.errors import InvalidRequest
from gptstore.evaluation.builtin_suites import BUILTIN_SUITES, build_suite_file, builtin_suite
from gptstore.evaluation.datasets import check_task, read_eval_data
from gptstore.evaluation.prompting import PromptFormat
from gptstore.evaluation.runner import EvalReport, ProgressFn, evaluate_data

#: the metric that ranks a suite of each task by default, and whether higher is better
DEFAULT_METRICS: dict[str, tuple[str, bool]] = {
    "classification": ("accuracy", True), "qa": ("f1", True), "translation": ("bleu", True),
    "code": ("pass@1", True), "causal-lm": ("bits_per_byte", False)}
KNOWN_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1", "loss"), "qa": ("exact_match", "f1"),
    "translation": ("bleu", "chrf"), "code": ("pass@1", "pass@10", "pass@100"),
    "causal-lm": ("bits_per_byte", "perplexity", "nll_per_token", "loss", "token_accuracy")}


def add_suite(catalog: Any, name: str, data: Path, *, task: str | None = None,
              metric: str | None = None, prompt: PromptFormat | None = None,
              description: str = "", license: str | None = None, source: str | None = None,
              builtin: bool = False, replace: bool = False) -> SuiteInfo:
    """Store an evaluation file as suite `name` (the file is read for its task first, so
    a broken file never becomes a suite)."""
    read = read_eval_data(data, task)
    examples = len(read) if read.task != "causal-lm" else 1
    default_metric, _ = DEFAULT_METRICS[read.task]
    metric = metric or default_metric
    if metric not in KNOWN_METRICS[read.task]:
        raise InvalidRequest(f"metric {metric!r} is not reported for {read.task}; use one of "
                             f"{', '.join(KNOWN_METRICS[read.task])}", param="metric")
    higher = metric not in ("bits_per_byte", "perplexity", "nll_per_token", "loss")
    return Evaluations(catalog).add_suite(
        name, data, task=check_task(read.task), examples=examples, metric=metric,
        higher_is_better=higher, prompt=(prompt or PromptFormat()).to_dict(),
        description=description, license=license, source=source, builtin=builtin,
        replace=replace)


def install_builtin(catalog: Any, names: list[str] | None = None, *,
                    source: Path | None = None) -> list[SuiteInfo]:
    """Add built-in suites: from `source` (a folder laid out like ../shared/data: whole
    splits) or from the packaged subsets. Without names: every suite that can be built
    (all of them with `source`, the packaged ones without)."""
    chosen = [builtin_suite(n) for n in names] if names else [
        s for s in BUILTIN_SUITES.values() if source is not None or s.packaged]
    added = []
    with tempfile.TemporaryDirectory(prefix="gptstore-suite-") as tmp:
        for spec in chosen:
            path, _ = build_suite_file(spec, Path(tmp), source)
            added.append(add_suite(
                catalog, spec.name, path, task=spec.task, metric=spec.metric,
                prompt=PromptFormat.from_dict(spec.prompt), description=spec.description,
                license=spec.license, source=spec.source, builtin=True, replace=True))
    return added


def evaluate_on_suite(catalog: Any, ref: str, suite_name: str, *, samples: int = 1,
                      batch_size: int = 32, progress: ProgressFn | None = None
                      ) -> tuple[EvalReport, ResultInfo]:
    """Evaluate `ref` on the suite's data with its prompt, and record the result."""
    evaluations = Evaluations(catalog)
    suite = evaluations.get_suite(suite_name)
    version = catalog.resolve(ref)
    data = read_eval_data(evaluations.suite_data(suite), suite.task)
    report = evaluate_data(catalog, version, data, prompt=PromptFormat.from_dict(suite.prompt),
                           samples=samples, batch_size=batch_size, progress=progress)
    result = evaluations.record(suite, version.id, data_digest=data.digest,
                                metrics=report.metrics, mode=report.mode,
                                examples=report.examples, seconds=report.seconds)
    return report, result
