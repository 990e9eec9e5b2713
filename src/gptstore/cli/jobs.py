"""`gptstore files ...`, `gptstore jobs ...` and `gptstore worker`: the jobs service from
the shell, on the same store (and through the same service functions) as the HTTP API.

Owns only the presentation: tables by default, JSON with `--json`, a progress bar that
follows a job's events with `jobs show ID --follow`.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gptstore.cli.common import (
    console,
    err_console,
    human_size,
    id_column,
    open_catalog,
    print_json,
)
from gptstore.errors import NotFound

#: files the CLI uploads belong to the single local user, as over the API without
#: accounts; a job submitted from the CLI belongs to its model's namespace (`submit`).
#: The CLI is the store's operator: its lists show every owner's files and jobs.
OWNER = "local"
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

files_app = typer.Typer(help="Upload and manage training files.", no_args_is_help=True)
jobs_app = typer.Typer(help="Follow and control fine-tuning jobs.", no_args_is_help=True)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


# -- files ----------------------------------------------------------------------------


def upload_file(catalog: Any, path: Path, owner: str = OWNER) -> Any:
    """Upload a local training file (streamed in chunks) into the store."""
    if not path.is_file():
        raise NotFound(f"{path} is not a file: give the path of a training file",
                       param="file")

    def chunks() -> Any:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                yield block

    return catalog.files.upload(chunks(), filename=path.name, purpose="fine-tune",
                                owner=owner, max_bytes=catalog.settings.max_upload_bytes)


@files_app.command("upload")
def files_upload(path: Annotated[Path, typer.Argument(help="A training file.")],
                 as_json: JsonFlag = False) -> None:
    """Upload a training file; it is checked on upload (see `files show`)."""
    with open_catalog() as catalog:
        file = upload_file(catalog, path)
    if as_json:
        print_json({"id": file.id, "filename": file.filename, "bytes": file.bytes,
                    "status": file.status, "report": file.report})
        return
    state = "ok" if file.status == "processed" else "has errors (gptstore files show)"
    console.print(f"uploaded [bold]{file.id}[/] ({escape(file.filename)}, "
                  f"{human_size(file.bytes)}): "
                  f"{state}")


@files_app.command("list")
def files_list(as_json: JsonFlag = False) -> None:
    """Training files and job results in the store (every owner's), newest first."""
    with open_catalog() as catalog:
        files, _ = catalog.files.page()
    if as_json:
        print_json([{"id": f.id, "filename": f.filename, "bytes": f.bytes,
                     "purpose": f.purpose, "status": f.status, "owner": f.owner,
                     "created_at": f.created_at.isoformat()} for f in files])
        return
    table = Table(id_column("id", [f.id for f in files]), "file", "size", "purpose", "status",
                  "owner", "uploaded")
    for f in files:
        table.add_row(f.id, escape(f.filename), human_size(f.bytes), f.purpose, f.status, f.owner,
                      _when(f.created_at))
    console.print(table)


@files_app.command("show")
def files_show(file_id: str, as_json: JsonFlag = False) -> None:
    """A file and its validation report."""
    with open_catalog() as catalog:
        file = catalog.files.get(file_id)
    report = file.report or {}
    if as_json:
        print_json({"id": file.id, "filename": file.filename, "bytes": file.bytes,
                    "purpose": file.purpose, "status": file.status, "report": report})
        return
    console.print(f"[bold]{file.id}[/] {escape(file.filename)} ({human_size(file.bytes)}, "
                  f"{file.purpose}): {report.get('format')} / {report.get('task')}, "
                  f"{report.get('examples')} examples")
    for issue in report.get("errors", []):
        console.print(f"[red]error[/] line {issue.get('line')}: "
                      f"{escape(str(issue.get('message')))}")
    for issue in report.get("warnings", [])[:10]:
        console.print(f"[yellow]warning[/] line {issue.get('line')}: "
                      f"{escape(str(issue.get('message')))}")


@files_app.command("rm")
def files_rm(file_id: str) -> None:
    """Delete a file (refused while an unfinished job reads it)."""
    from gptstore.jobs.store import JobStore

    with open_catalog() as catalog:
        JobStore(catalog.db).check_file_unused(file_id)
        catalog.files.delete(file_id)
    console.print(f"deleted {file_id}")


# -- jobs -----------------------------------------------------------------------------


def _store(catalog: Any) -> Any:
    from gptstore.jobs.store import JobStore

    return JobStore(catalog.db)


def _published(job: Any) -> str | None:
    """The model a job published: none until it succeeded (as OpenAI's job object)."""
    return job.fine_tuned_model if job.status.value == "succeeded" else None


def _target(job: Any) -> str:
    """What a job publishes, for tables: the name it will take while it may still."""
    if job.status.value == "succeeded" or not job.status.finished:
        return str(job.fine_tuned_model)
    return f"(nothing published: {job.status.value})"


def job_summary(job: Any) -> dict[str, Any]:
    return {"id": job.id, "status": job.status.value, "owner": job.owner, "model": job.model,
            "fine_tuned_model": _published(job), "training_file": job.training_file,
            "validation_file": job.validation_file, "hyperparameters": job.hyperparameters,
            "trained_tokens": job.trained_tokens, "error": job.error,
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "attempts": job.attempts}


@jobs_app.command("list")
def jobs_list(limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 20,
              as_json: JsonFlag = False) -> None:
    """Fine-tuning jobs in the store (every owner's), newest first."""
    with open_catalog() as catalog:
        jobs, _ = _store(catalog).page(limit=limit)
    if as_json:
        print_json([job_summary(j) for j in jobs])
        return
    table = Table(id_column("id", [j.id for j in jobs]), "status", "base",
                  id_column("model", [_target(j) for j in jobs]), "owner", "created")
    for j in jobs:
        table.add_row(j.id, j.status.value, j.model, _target(j), j.owner, _when(j.created_at))
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream the job's events "
                                         "with a progress bar until it finishes.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """A job's status (and, with --follow, its events as they happen)."""
    with open_catalog() as catalog:
        store = _store(catalog)
        job = store.get(job_id)
        if follow:
            job = _follow(store, job_id)
    if as_json:
        print_json(job_summary(job))
        return
    console.print(f"[bold]{job.id}[/] {job.status.value}: {job.model} -> {_target(job)}")
    if job.error:
        console.print(f"[red]error[/] ({job.error.get('param')}): "
                      f"{escape(str(job.error.get('message')))}")
    if follow and job.status.value == "failed":
        raise typer.Exit(1)


def _follow(store: Any, job_id: str) -> Any:
    """Print events as they come, with a progress bar of the training steps (stderr)."""
    last: str | None = None
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                        TimeElapsedColumn(), console=err_console)
    bar = None
    with progress:
        while True:
            # The status is read before the events, and the events are read to the end:
            # `finish` writes the last event and the final status in one transaction, so
            # every event of a job seen finished here is printed before returning.
            job = store.get(job_id)
            while batch := store.events_since(job_id, last):
                for event in batch:
                    last = event.id
                    data = event.data or {}
                    if event.type == "metrics" and "train_loss" in data:
                        if bar is None:
                            bar = progress.add_task("training", total=data.get("total_steps"),
                                                    loss="")
                        progress.update(bar, completed=data["step"],
                                        loss=f"loss {data['train_loss']:.4f}")
                    else:
                        progress.console.print(f"{_when(event.created_at)} "
                                               f"{escape(event.message)}")
            if job.status.finished:
                return job
            time.sleep(0.5)


@jobs_app.command("events")
def jobs_events(job_id: str, limit: Annotated[int, typer.Option(min=1)] = 50,
                as_json: JsonFlag = False) -> None:
    """A job's latest events (newest last)."""
    with open_catalog() as catalog:
        events, _ = _store(catalog).events(job_id, limit=limit)
    events.reverse()
    if as_json:
        print_json([{"id": e.id, "created_at": e.created_at.isoformat(), "level": e.level,
                     "type": e.type, "message": e.message, "data": e.data} for e in events])
        return
    for event in events:
        console.print(f"{_when(event.created_at)} {escape(event.message)}", highlight=False)


def _control(action: str, job_id: str) -> None:
    with open_catalog() as catalog:
        store = _store(catalog)
        job = {"cancel": store.request_cancel, "pause": store.request_pause,
               "resume": store.resume}[action](job_id)
    console.print(f"{job.id}: {job.status.value}" + (
        f" ({action} requested; the worker acts within seconds)"
        if job.status.value == "running" else ""))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a job (a running one is stopped within seconds)."""
    _control("cancel", job_id)


@jobs_app.command("pause")
def jobs_pause(job_id: str) -> None:
    """Pause a job; a running one stops after its step and saves a checkpoint."""
    _control("pause", job_id)


@jobs_app.command("resume")
def jobs_resume(job_id: str) -> None:
    """Queue a paused job again; it continues from its checkpoint."""
    _control("resume", job_id)


def submit(config: Any, *, follow: bool = False) -> str:
    """`gptstore finetune --submit`: upload the files and queue a job with the config."""
    from gptstore.catalog.names import parse_ref
    from gptstore.jobs.service import SERVICE_FIELDS, create_job
    from gptstore.training.config import TrainConfig

    # the job belongs to the namespace it publishes into, as an API job belongs to its
    # caller's; the operator at the shell may publish into any, as a run in the foreground
    owner = parse_ref(config.name).namespace
    # only what the command set: the service's own defaults (a job's checkpoint models)
    # stand where the command left a setting at TrainConfig's default
    options = {k: v for k, v in config.to_dict().items()
               if k not in SERVICE_FIELDS and v != TrainConfig.default_of(k)}
    with open_catalog() as catalog:
        uploaded = [upload_file(catalog, Path(config.train_file), owner)]
        try:
            if config.valid_file:
                uploaded.append(upload_file(catalog, Path(config.valid_file), owner))
            job = create_job(catalog, _store(catalog), owner=owner, model=config.base,
                             training_file=uploaded[0].id,
                             validation_file=uploaded[1].id if len(uploaded) > 1 else None,
                             options=options)
        except BaseException:
            for file in uploaded:  # a refused job leaves no copies of its files behind
                catalog.files.delete(file.id)
            raise
        err_console.print(f"queued {job.id}: {job.model} -> {job.fine_tuned_model} "
                          f"(follow it with `gptstore jobs show {job.id} --follow`)")
        if follow:
            _follow(_store(catalog), job.id)
    return str(job.id)


# -- the worker -----------------------------------------------------------------------


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at the same time.")] = 1,
) -> None:
    """Run queued fine-tuning jobs from the store's database (any number of workers on
    one PostgreSQL database and shared GPTSTORE_HOME). Stops on Ctrl-C / SIGTERM: its
    running jobs checkpoint and go back to the queue."""
    import logging

    from gptstore.cli.common import settings
    from gptstore.jobs.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runner = Worker(settings(), concurrency=concurrency)
    stop = runner.stop
    signal.signal(signal.SIGTERM, lambda *_: stop(timeout=0))
    signal.signal(signal.SIGINT, lambda *_: stop(timeout=0))
    err_console.print(f"worker {runner.name}: running up to {concurrency} job(s); "
                      "Ctrl-C stops it")
    runner.run()


def register(app: typer.Typer) -> None:
    app.add_typer(files_app, name="files")
    app.add_typer(jobs_app, name="jobs")
    app.command("worker")(worker)
