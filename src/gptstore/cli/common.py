"""What every CLI module shares: settings, the catalog, console output and error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Column
from rich.text import Text

from gptstore.errors import GptStoreError
from gptstore.settings import Settings

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    return Settings()


@contextmanager
def open_catalog() -> Iterator[Any]:
    from gptstore.catalog.repository import Catalog

    catalog = Catalog(settings())
    try:
        yield catalog
    finally:
        catalog.close()


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def fail(error: GptStoreError | str, code: int = 1) -> NoReturn:
    message = error.message if isinstance(error, GptStoreError) else error
    # one line however long (rich would wrap it at the terminal width, or at 80 columns)
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False,
                      soft_wrap=True)
    raise SystemExit(code)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def id_column(header: str, values: Iterable[object]) -> Column:
    """A table column of what a user copies into the next command (ids, model names):
    never shortened. Rich fits a table to the terminal (80 columns where it cannot
    tell) by cutting its widest cells with an ellipsis; the other columns give way."""
    width = max((len(str(v)) for v in values), default=0)
    return Column(header, min_width=max(width, len(header)), no_wrap=True)
