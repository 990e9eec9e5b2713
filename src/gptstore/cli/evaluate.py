"""`gptstore eval`: a store model's task metrics on a file, with a progress bar.

Presentation only: the flags build a `PromptFormat`, `evaluation.runner.evaluate_model`
does the work, and the result is a table (scalar metrics, per-class scores, the
confusion matrix) or one JSON object on stdout with `--json` (metrics under `metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gptstore.cli.common import console, fail, open_catalog, print_json

err_console = Console(stderr=True)


def eval_(
    name: Annotated[str, typer.Argument(help="Model: namespace/name[@VERSION].")],
    data: Annotated[Path | None, typer.Option(help="An evaluation file (see --task).")] = None,
    suite: Annotated[str | None, typer.Option(
        help="Evaluate on a stored suite (its data, task, prompt and metric) and record the "
             "result: it shows in `gptstore leaderboard SUITE` and the model card.")] = None,
    task: Annotated[str | None, typer.Option(
        help="classification, causal-lm, qa, translation or code (default: the model's "
             "task for a classifier, else told by the file's keys).")] = None,
    shots: Annotated[int, typer.Option(
        min=0, help="In-context examples for a base model, taken from the start of the "
                    "file (they are not scored).")] = 0,
    template: Annotated[str | None, typer.Option(
        help="Prompt template with the example's fields in braces: {text}, {question}, "
             "{context}, {source}, {prompt}.")] = None,
    chat: Annotated[bool | None, typer.Option(
        "--chat/--raw", help="Ask through the model's chat template, or as raw text "
                             "(default: chat for generation, raw for classification).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system message.")] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(
        help="LABEL=WORD: the word a base model says for a label (repeatable).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens per answer.")] = 64,
    samples: Annotated[int, typer.Option(
        min=1, help="Code: samples per problem (pass@k for k <= samples).")] = 1,
    limit: Annotated[int | None, typer.Option(
        min=1, help="Score only the first N examples.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per batch.")] = 32,
    predictions: Annotated[Path | None, typer.Option(
        help="Write each scored example's answer (and label probabilities) to this JSON "
             "Lines file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Evaluate a store model on a file: the task's metrics (accuracy, perplexity,
    exact match, BLEU, pass@k, ...)."""
    from gptstore.evaluation.prompting import PromptFormat
    from gptstore.evaluation.runner import evaluate_model
    from gptstore.evaluation.verbalizers import parse_verbalizers

    if (data is None) == (suite is None):
        fail("give either --data FILE or --suite NAME")
    if suite is not None:
        from gptstore.evaluation.suites import evaluate_on_suite

        with open_catalog() as catalog, ProgressBar() as bar:
            report, _ = evaluate_on_suite(catalog, name, suite, samples=samples,
                                          batch_size=batch_size, progress=bar)
        _output(report, f"suite {suite}", predictions, as_json)
        return
    assert data is not None
    prompt = PromptFormat(template=template, chat=chat, shots=shots, system=system,
                          verbalizers=parse_verbalizers(verbalizer or []),
                          max_tokens=max_tokens)
    with open_catalog() as catalog, ProgressBar() as bar:
        report = evaluate_model(catalog, name, data, task=task, prompt=prompt,
                                samples=samples, limit=limit, batch_size=batch_size,
                                progress=bar)
    _output(report, data.name, predictions, as_json)


def _output(report: Any, what: str, predictions: Path | None, as_json: bool) -> None:
    doc = report.to_dict()
    if predictions is not None:
        predictions.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n"
                                       for row in report.predictions), encoding="utf-8")
    if as_json:
        print_json(doc)
        return
    show_report(doc, title=f"{doc['model']} on {what} ({doc['examples']} examples, "
                           f"{doc['mode']}, {doc['seconds']:.1f} s)")


class ProgressBar:
    """One rich bar per phase (loading, scoring, generating, running tests) on stderr."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=err_console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)


def show_report(doc: dict[str, Any], *, title: str) -> None:
    metrics = doc["metrics"]
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    per_class = metrics.get("per_class")
    if per_class:
        classes = Table("label", "precision", "recall", "f1", "support", title="per class")
        for label, s in per_class.items():
            classes.add_row(label, f"{s['precision']:.3f}", f"{s['recall']:.3f}",
                            f"{s['f1']:.3f}", str(s["support"]))
        console.print(classes)
        labels = metrics["labels"]
        confusion = Table("gold \\ predicted", *labels, title="confusion matrix")
        for label, row in zip(labels, metrics["confusion"], strict=True):
            confusion.add_row(label, *(str(x) for x in row))
        console.print(confusion)


def register(app: typer.Typer) -> None:
    from gptstore.cli import suites

    app.command("eval")(eval_)
    app.add_typer(suites.app, name="suites", help="Evaluation suites: list, add, built-in.")
    app.command("leaderboard")(suites.leaderboard)
