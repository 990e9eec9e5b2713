"""`gptstore data ...`: commands about training files (mounted as `gptstore data`).

Owns only the presentation of `gptstore.data.validate_file`'s report: rich tables by
default, one JSON object with `--json`, exit status 1 when the file has errors. The
tokenizer of `--base` comes from the store through `gptstore.inference.loader`, imported
lazily so `gptstore --help` stays fast.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from gptstore.cli.common import open_catalog
from gptstore.data import (
    DEFAULT_MAX_LENGTH,
    TASKS,
    ValidationReport,
    default_max_length,
    format_names,
    validate_file,
)
from gptstore.data.formats.base import Issue
from gptstore.errors import GptStoreError

app = typer.Typer(help="Check training files before fine-tuning.", no_args_is_help=True)

#: how many errors / warnings the rich view lists (`--json` has up to 100 of each)
SHOWN = 20


@app.callback()
def _data() -> None:
    """Check training files before fine-tuning."""


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The training file (JSONL, .txt, .csv, .tsv).")],
    task: Annotated[str | None, typer.Option(
        help=f"Task to train: {' or '.join(TASKS)} (default: from the format).")] = None,
    format: Annotated[str | None, typer.Option(
        "--format", help=f"File format, overriding detection: {', '.join(format_names())}.")
    ] = None,
    base: Annotated[str | None, typer.Option(
        help="Base model in the store whose tokenizer counts tokens, e.g. "
        "HuggingFaceTB/SmolLM2-135M-Instruct.")] = None,
    max_length: Annotated[int | None, typer.Option(
        min=2, help=f"Context length in tokens (default: the base's, at most "
        f"{DEFAULT_MAX_LENGTH}).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs for the time estimate.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Validate a training file: format, errors by line, tokens, labels, time estimate."""
    console = Console()
    try:
        with open_catalog() if base else nullcontext() as catalog:
            version = tokenizer = None
            if catalog is not None:
                from gptstore.inference.loader import load_tokenizer

                version = catalog.resolve(base)
                tokenizer = load_tokenizer(catalog, version)
            report = validate_file(
                file,
                task=task,  # type: ignore[arg-type]  # checked by parse_file
                format=format,
                tokenizer=tokenizer,
                max_length=max_length or (default_max_length(tokenizer) if tokenizer else None),
            )
            if catalog is not None:
                from gptstore.training.estimate import estimate_report

                estimate_report(catalog, version, report, epochs=epochs)
    except GptStoreError as exc:
        if as_json:
            typer.echo(json.dumps({"error": {"message": exc.message, "type": exc.type,
                                             "param": exc.param}}))
        else:
            Console(stderr=True).print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        print_report(console, report, base=base)
    if not report.ok:
        raise typer.Exit(1)


def print_report(console: Console, report: ValidationReport, *, base: str | None) -> None:
    """The report as a summary table, label and issue tables, and a verdict panel."""
    summary = Table(title=f"Training file {Path(report.path).name}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("format", report.format or "unknown")
    summary.add_row("task", report.task or "unknown")
    summary.add_row("examples", str(report.examples))
    summary.add_row("duplicates", str(report.duplicates))
    summary.add_row("digest", report.digest[:23] + "…")
    if report.tokenizer is not None:
        summary.add_row("tokenizer", base or report.tokenizer)
        summary.add_row("max length", str(report.max_length))
        summary.add_row("training examples", str(report.training_examples))
        if report.tokens is not None:
            tokens = report.tokens
            summary.add_row("tokens min / mean / max",
                            f"{tokens.min} / {tokens.mean:.1f} / {tokens.max}")
            summary.add_row("tokens total", f"{tokens.total:,}")
        summary.add_row("truncated", str(report.truncated))
    else:
        summary.add_row("tokens", "not counted (pass --base MODEL)")
    if report.estimated_training_seconds is not None:
        summary.add_row(
            "estimated training time",
            f"{_duration(report.estimated_training_seconds)} for {report.epochs} epoch(s) "
            f"at ~{report.tokens_per_second:.0f} tokens/s ({report.estimate_basis})",
        )
    console.print(summary)
    if report.label_distribution:
        labels = Table(title="Labels")
        labels.add_column("id", justify="right")
        labels.add_column("label")
        labels.add_column("examples", justify="right")
        for i, (name, count) in enumerate(report.label_distribution.items()):
            labels.add_row(str(i), name, str(count))
        console.print(labels)
    _print_issues(console, "Errors", report.errors, "red")
    _print_issues(console, "Warnings", report.warnings, "yellow")
    if report.ok:
        console.print(Panel("[green]OK[/green]: ready to train", expand=False))
    else:
        n = len(report.errors)
        console.print(Panel(f"[red]{n} error{'s' if n != 1 else ''}[/red]: training refuses "
                            "this file; fix the lines above", expand=False))


def _print_issues(console: Console, title: str, issues: list[Issue], colour: str) -> None:
    if not issues:
        return
    table = Table(title=f"{title} ({len(issues)})", title_style=colour)
    table.add_column("line", justify="right")
    table.add_column("rule", style=colour)
    table.add_column("message")
    for issue in issues[:SHOWN]:
        table.add_row("" if issue.line is None else str(issue.line), issue.rule, issue.message)
    if len(issues) > SHOWN:
        table.add_row("", "…", f"and {len(issues) - SHOWN} more (--json lists up to 100)")
    console.print(table)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
