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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gptstore.cli.common import console, err_console, human_size, open_catalog, print_json

#: everything the CLI creates belongs to the single local user (as over the API without
#: accounts)
OWNER = "local"
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

files_app = typer.Typer(help="Upload and manage training files.", no_args_is_help=True)
jobs_app = typer.Typer(help="Follow and control fine-tuning jobs.", no_args_is_help=True)


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


# -- files ----------------------------------------------------------------------------


def upload_file(catalog: Any, path: Path) -> Any:
    """Upload a local training file (streamed in chunks) into the store."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a file")

    def chunks() -> Any:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                yield block

    return catalog.files.upload(chunks(), filename=path.name, purpose="fine-tune",
                                owner=OWNER, max_bytes=catalog.settings.max_upload_bytes)


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
    console.print(f"uploaded [bold]{file.id}[/] ({file.filename}, {human_size(file.bytes)}): "
                  f"{state}")


@files_app.command("list")
def files_list(as_json: JsonFlag = False) -> None:
    """Your files, newest first."""
    with open_catalog() as catalog:
        files, _ = catalog.files.page(owner=OWNER)
    if as_json:
        print_json([{"id": f.id, "filename": f.filename, "bytes": f.bytes,
                     "purpose": f.purpose, "status": f.status,
                     "created_at": f.created_at.isoformat()} for f in files])
        return
    table = Table("id", "file", "size", "purpose", "status", "uploaded")
    for f in files:
        table.add_row(f.id, f.filename, human_size(f.bytes), f.purpose, f.status,
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
    console.print(f"[bold]{file.id}[/] {file.filename} ({human_size(file.bytes)}, "
                  f"{file.purpose}): {report.get('format')} / {report.get('task')}, "
                  f"{report.get('examples')} examples")
    for issue in report.get("errors", []):
        console.print(f"[red]error[/] line {issue.get('line')}: {issue.get('message')}")
    for issue in report.get("warnings", [])[:10]:
        console.print(f"[yellow]warning[/] line {issue.get('line')}: {issue.get('message')}")


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


def job_summary(job: Any) -> dict[str, Any]:
    return {"id": job.id, "status": job.status.value, "model": job.model,
            "fine_tuned_model": job.fine_tuned_model, "training_file": job.training_file,
            "validation_file": job.validation_file, "hyperparameters": job.hyperparameters,
            "trained_tokens": job.trained_tokens, "error": job.error,
            "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "attempts": job.attempts}


@jobs_app.command("list")
def jobs_list(limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 20,
              as_json: JsonFlag = False) -> None:
    """Fine-tuning jobs, newest first."""
    with open_catalog() as catalog:
        jobs, _ = _store(catalog).page(owner=OWNER, limit=limit)
    if as_json:
        print_json([job_summary(j) for j in jobs])
        return
    table = Table("id", "status", "base", "model", "created")
    for j in jobs:
        table.add_row(j.id, j.status.value, j.model, j.fine_tuned_model, _when(j.created_at))
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
    console.print(f"[bold]{job.id}[/] {job.status.value}: {job.model} -> "
                  f"{job.fine_tuned_model}")
    if job.error:
        console.print(f"[red]error[/] ({job.error.get('param')}): {job.error.get('message')}")
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
                        progress.console.print(f"{_when(event.created_at)} {event.message}")
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
        console.print(f"{_when(event.created_at)} {event.message}", highlight=False)


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
    from gptstore.jobs.service import SERVICE_FIELDS, create_job

    with open_catalog() as catalog:
        train = upload_file(catalog, Path(config.train_file))
        valid = upload_file(catalog, Path(config.valid_file)) if config.valid_file else None
        options = {k: v for k, v in config.to_dict().items() if k not in SERVICE_FIELDS}
        job = create_job(catalog, _store(catalog), owner=OWNER, model=config.base,
                         training_file=train.id, validation_file=valid.id if valid else None,
                         options=options)
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
