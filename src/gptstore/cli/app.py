"""The root `gptstore` command: sub-apps per noun plus serve, generate and gc."""

from __future__ import annotations

import warnings
from gc import freeze as freeze_collector
from typing import Annotated

import typer
from pydantic import ValidationError

from gptstore import __version__
from gptstore.cli import accounts, doctor, evaluate, finetune, jobs, models, run
from gptstore.cli.common import console, fail, human_size, open_catalog, settings
from gptstore.errors import GptStoreError
from gptstore.settings import Settings, describe_settings

SETTINGS_HELP = "Settings (environment variables):\n\n" + "\n\n".join(
    describe_settings().splitlines()
)

app = typer.Typer(
    name="gptstore",
    help="gptstore: a self-hosted store of GPT-style language models.",
    epilog=SETTINGS_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.command()(run.generate)
app.command()(run.chat)
app.command()(doctor.doctor)


def _add_optional_subapps() -> None:
    from gptstore.cli import data

    app.add_typer(data.app, name="data", help="Check training files before fine-tuning.")


_add_optional_subapps()
finetune.register(app)  # finetune, classify
evaluate.register(app)  # eval, suites, leaderboard


def _add_sweep() -> None:
    from gptstore.cli import sweep

    app.command("sweep")(sweep.sweep)


_add_sweep()
jobs.register(app)  # files, jobs, worker
accounts.register(app)  # users, orgs, keys, audit


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"gptstore {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print the version.")] = False,
) -> None:
    """gptstore: pick, fine-tune, publish and serve GPT-style models."""


@app.command(epilog=SETTINGS_HELP)
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (GPTSTORE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (GPTSTORE_PORT).")] = None,
    pull_builtin: Annotated[bool, typer.Option(
        help="Pull the built-in base model first if the store lacks it.")] = False,
) -> None:
    """Start the HTTP server (OpenAI-compatible API under /v1, store API under /api)."""
    import uvicorn

    from gptstore.api.app import build_app, preload_problem

    cfg = settings()
    if host:
        cfg.host = host
    if port is not None:
        cfg.port = port
    from gptstore.accounts.store import AccountStore
    from gptstore.api.auth import startup_problem

    with open_catalog() as catalog:
        problem = startup_problem(cfg, AccountStore(catalog.db).has_users())
    if problem:
        fail(problem)
    if pull_builtin:
        from gptstore.catalog.importers import BUILTIN_NAME, ensure_builtin

        with open_catalog() as catalog:
            if not catalog.exists(BUILTIN_NAME):
                with console.status(f"pulling {BUILTIN_NAME} (first run only)…"):
                    ensure_builtin(catalog)
    with open_catalog() as catalog:
        problem = preload_problem(catalog, cfg.preload_models)
    if problem:
        fail(problem)
    # on SIGTERM, requests in flight get this long to finish, then they are cancelled
    uvicorn.run(build_app(cfg, record=True), host=cfg.host, port=cfg.port, log_level="info",
                timeout_graceful_shutdown=max(1, round(cfg.shutdown_grace_seconds)))


@app.command()
def gc(
    grace: Annotated[int | None, typer.Option(
        help="Keep unreferenced blobs younger than this many seconds "
             "(default GPTSTORE_GC_GRACE_SECONDS).")] = None,
) -> None:
    """Delete blobs that no version references any more."""
    with open_catalog() as catalog:
        result = catalog.gc(grace_seconds=grace)
    console.print(f"removed {result.removed} unreferenced files, freed "
                  f"{human_size(result.freed)}")
    if result.kept:
        console.print(f"kept {result.kept} unreferenced files ({human_size(result.kept_bytes)})"
                      f" younger than the grace period of {result.grace_seconds:g} s; "
                      "`gptstore gc --grace 0` removes them too (only while nothing is "
                      "importing or publishing)")


def main() -> None:
    """Console entry point: GptStoreError, or a GPTSTORE_* environment variable the
    settings refuse, becomes one clear line and exit status 1."""
    # PEFT (0.21) reads transformers' deprecated `is_gradient_checkpointing` when it wraps
    # or loads a model: a FutureWarning on every fine-tune and export that the user can
    # do nothing about
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                            category=FutureWarning)
    try:
        _main()
    finally:
        # The interpreter's teardown collects cycles over every object still alive: with
        # torch and transformers' thousands of modules loaded, ~1.1 s of an 8 s
        # `gptstore generate` on a 2-core EPYC, after the answer was printed. Frozen
        # objects are left out of those collections (0.2 s); they are still freed, and
        # atexit handlers still run. Python does not promise __del__ at exit anyway.
        freeze_collector()


def _main() -> None:
    try:
        app()
    except GptStoreError as exc:
        fail(exc)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        fail("; ".join(f"GPTSTORE_{'_'.join(map(str, e['loc'])).upper()}="
                       f"{e.get('input')!r}: {e['msg']}" for e in exc.errors())
             + " (fix the environment variable; `gptstore --help` lists the settings)")
    except KeyboardInterrupt:
        fail("interrupted", code=130)
