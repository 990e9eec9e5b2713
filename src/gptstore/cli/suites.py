"""`gptstore suites ...` and `gptstore leaderboard SUITE`: evaluation suites in the store
and the models ranked on them (presentation only; `evaluation/suites.py` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gptstore.cli.common import console, open_catalog, print_json

app = typer.Typer(no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


@app.command("list")
def list_suites(as_json: JsonFlag = False) -> None:
    """The evaluation suites in the store."""
    from gptstore.catalog.evaluations import Evaluations

    with open_catalog() as catalog:
        suites = Evaluations(catalog).list_suites()
    if as_json:
        print_json([s.to_dict() for s in suites])
        return
    table = Table("suite", "task", "examples", "metric", "data", "licence")
    for s in suites:
        table.add_row(s.name, s.task, str(s.examples),
                      s.metric + ("" if s.higher_is_better else " (lower is better)"),
                      s.data_digest[:19], s.license or "")
    console.print(table)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Suite name (lower case, digits, . _ -).")],
    data: Annotated[Path, typer.Option(help="The evaluation file (as `gptstore eval`).")],
    task: Annotated[str | None, typer.Option(help="Task (default: told by the file).")] = None,
    metric: Annotated[str | None, typer.Option(help="The metric that ranks models.")] = None,
    template: Annotated[str | None, typer.Option(help="Prompt template.")] = None,
    shots: Annotated[int, typer.Option(min=0, help="In-context examples.")] = 0,
    chat: Annotated[bool | None, typer.Option("--chat/--raw", help="Chat or raw.")] = None,
    verbalizer: Annotated[list[str] | None, typer.Option(help="LABEL=WORD.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens.")] = 64,
    description: Annotated[str, typer.Option(help="What the suite measures.")] = "",
    license: Annotated[str | None, typer.Option(help="The data's licence.")] = None,
) -> None:
    """Add a suite of your own: its data is stored in the store, like a file."""
    from gptstore.evaluation.prompting import PromptFormat
    from gptstore.evaluation.suites import add_suite
    from gptstore.evaluation.verbalizers import parse_verbalizers

    prompt = PromptFormat(template=template, chat=chat, shots=shots,
                          verbalizers=parse_verbalizers(verbalizer or []), max_tokens=max_tokens)
    with open_catalog() as catalog:
        suite = add_suite(catalog, name, data, task=task, metric=metric, prompt=prompt,
                          description=description, license=license)
    console.print(f"added suite {suite.name} ({suite.task}, {suite.examples} examples, "
                  f"ranked by {suite.metric})")


@app.command("builtin")
def builtin(
    names: Annotated[list[str] | None, typer.Argument(
        help="Built-in suites (default: all that can be built).")] = None,
    source: Annotated[Path | None, typer.Option(
        help="A folder laid out like ../shared/data: build from the whole splits there "
             "(needed for suites that ship no data).")] = None,
) -> None:
    """Add the built-in suites (SST-2, TREC, AG News, SQuAD, NQ-open, Multi30k, MBPP,
    tiny Shakespeare)."""
    from gptstore.evaluation.suites import install_builtin

    with open_catalog() as catalog:
        added = install_builtin(catalog, names, source=source)
    for suite in added:
        console.print(f"{suite.name}: {suite.task}, {suite.examples} examples, "
                      f"data {suite.data_digest[:19]}")


def leaderboard(
    suite: Annotated[str, typer.Argument(help="Suite name.")],
    as_json: JsonFlag = False,
) -> None:
    """Models ranked on a suite: base models first, each with its lineage."""
    from gptstore.catalog.evaluations import leaderboard as board

    with open_catalog() as catalog:
        doc = board(catalog, suite)
    if as_json:
        print_json(doc)
        return
    info = doc["suite"]
    table = Table("#", "model", "base", "mode", info["metric"], "examples",
                  title=f"{info['name']} ({info['task']}, data {info['data_digest'][:19]})")
    for row in doc["rows"]:
        score = row["score"]
        table.add_row(str(row["rank"]), row["ref"], row["base"] or "(base model)", row["mode"],
                      "-" if score is None else f"{score:.4f}", str(row["examples"]))
    console.print(table)
