"""One job's process, forked for each job the worker runs (worker.py), so torch's
threads, the job's memory and a crash stay inside it (`process_main`).

It turns the job into its `TrainConfig` (files by id, read through the store's links,
never a caller's path), resumes from the run's last checkpoint when one is there (a
paused job, or one taken over from a dead worker), trains with the same `finetune` as
the CLI, and writes what happens as job events: metrics every step, checkpoints, the
outcome. On SIGTERM it stops after the current step with a checkpoint and exits with
`EXIT_STOPPED`; the worker decides what that means (paused, or re-queued for another
worker). When its worker dies it exits too (`exit_with_parent`).

The job's terminal state is written here for what the process knows (succeeded, or
failed with the reason); the worker writes it when the process died without a word.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from gptstore.catalog.repository import Catalog
from gptstore.catalog.tables import utcnow
from gptstore.errors import GptStoreError
from gptstore.jobs.service import resolved_hyperparameters
from gptstore.jobs.states import EXIT_STOPPED, JobStatus
from gptstore.jobs.store import JobInfo, JobStore, NewEvent
from gptstore.settings import Settings

#: events are written at most this often (a step can take milliseconds)
FLUSH_SECONDS = 1.0
#: TrainConfig params that name a job's file, as OpenAI names them
FILE_PARAMS = {"train_file": "training_file", "file": "training_file",
               "valid_file": "validation_file"}
#: exit status when the worker died first
EXIT_ORPHANED = 137
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss",
                  "valid_mean_token_accuracy")


class LeaseLost(Exception):
    """Another worker holds the job now: this process must stop touching it."""


class JobReporter:
    """A training callback that writes the run's events to the job (batched)."""

    def __init__(self, store: JobStore, job: JobInfo, worker: str) -> None:
        self.store = store
        self.job = job
        self.worker = worker
        self.pending: list[NewEvent] = []
        self.values: dict[str, Any] = {}
        self.last_flush = time.monotonic()
        self.task = "causal-lm"

    def __call__(self, event: Any) -> None:
        values = event.values
        urgent = True
        if event.kind == "start":
            config = values.get("config") or {}
            self.task = config.get("task", self.task)
            self.values["hyperparameters"] = resolved_hyperparameters(self.job, config)
            self._add(f"Fine-tuning resumed at step {event.step}" if values.get("resumed")
                      else "Fine-tuning job started")
        elif event.kind == "step":
            urgent = False
            # OpenAI's name for the step's share of target tokens predicted right
            accuracy = "train_mean_token_accuracy" if self.task == "causal-lm" \
                else "train_accuracy"
            data = {"step": event.step, "total_steps": event.total_steps,
                    "train_loss": values["loss"], accuracy: values["accuracy"],
                    "learning_rate": values["lr"],
                    "tokens_per_second": values["tokens_per_second"]}
            self._add(f"Step {event.step}/{event.total_steps}: training loss="
                      f"{values['loss']:.4f}", type="metrics", data=data)
            eta = values.get("eta_seconds")
            if eta is not None:
                self.values["estimated_finish"] = utcnow() + timedelta(seconds=float(eta))
        elif event.kind == "eval":
            data = {"step": event.step, "total_steps": event.total_steps,
                    **{f"valid_{k}": v for k, v in values.items()
                       if isinstance(v, int | float) and not isinstance(v, bool)}}
            if "valid_token_accuracy" in data:  # OpenAI's name for it
                data["valid_mean_token_accuracy"] = data["valid_token_accuracy"]
            shown = ", ".join(f"{k.removeprefix('valid_')}={v:.4f}" for k, v in data.items()
                              if k in ("valid_loss", "valid_accuracy",
                                       "valid_mean_token_accuracy"))
            reused = " (reused: an earlier run on the same base and validation data " \
                "computed it)" if values.get("reused") else ""
            self._add(f"Step {event.step}/{event.total_steps}: validation {shown}{reused}",
                      type="metrics", data=data)
        elif event.kind == "checkpoint_model":
            self.flush()
            metrics = dict(values["metrics"])
            if "valid_token_accuracy" in metrics:  # OpenAI's name for it
                metrics["valid_mean_token_accuracy"] = metrics.pop("valid_token_accuracy")
            self.store.add_checkpoint(self.job.id, step=event.step, model=values["model"],
                                      metrics=metrics)
            self._add(f"Checkpoint created at step {event.step}: {values['model']}")
        elif event.kind == "end":
            self._add(f"New fine-tuned model created: {values['ref']}")
        if urgent or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def _add(self, message: str, *, type: str = "message",
             data: dict[str, Any] | None = None) -> None:
        self.pending.append(NewEvent(message=message, type=type, data=data))

    def flush(self) -> None:
        if not self.pending and not self.values:
            return
        if not self.store.add_events(self.job.id, self.pending, worker=self.worker,
                                     **self.values):
            raise LeaseLost(f"job {self.job.id} is no longer held by {self.worker}")
        self.pending, self.values = [], {}
        self.last_flush = time.monotonic()


def train_config(catalog: Catalog, job: JobInfo, *, threads: int | None) -> Any:
    """The job's TrainConfig with its files read through the store, resuming when the run
    folder holds a checkpoint."""
    from gptstore.training import checkpoint as ckpt
    from gptstore.training.config import TrainConfig
    from gptstore.training.loop import default_run_dir

    files = catalog.files
    values = dict(job.config)
    values["train_file"] = str(files.path(files.get(job.training_file)))
    if job.validation_file:
        values["valid_file"] = str(files.path(files.get(job.validation_file)))
    run_dir = default_run_dir(catalog.settings, job.fine_tuned_model)
    values["resume"] = ckpt.latest_checkpoint(run_dir) is not None
    values["threads"] = threads
    return TrainConfig.from_dict(values)


def results_csv(record: dict[str, Any]) -> bytes:
    """OpenAI's results file: one row per logged step, validation figures where the run
    validated (`step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`)."""
    curves = record.get("curves") or {}
    rows: dict[int, dict[str, Any]] = {}
    for column, curve in (("train_loss", "train_loss"), ("train_accuracy", "train_accuracy"),
                          ("valid_loss", "valid_loss"),
                          ("valid_mean_token_accuracy", "valid_token_accuracy"),
                          ("valid_mean_token_accuracy", "valid_accuracy")):
        for step, value in curves.get(curve, []):
            rows.setdefault(int(step), {"step": int(step)})[column] = value
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode()


def _error(exc: GptStoreError) -> dict[str, Any]:
    param = FILE_PARAMS.get(exc.param or "", exc.param)
    code = {"training_file": "invalid_training_file",
            "validation_file": "invalid_validation_file"}.get(param or "", exc.type)
    return {"code": code, "message": exc.message, "param": param}


def run_job(settings: Settings, job_id: str, worker: str, *, threads: int | None,
            stop: threading.Event) -> int:
    """Train the job; the process's exit status (0 done, EXIT_STOPPED stopped, 1 failed)."""
    from gptstore.training.loop import RunInterrupted, finetune

    catalog = Catalog(settings)
    store = JobStore(catalog.db)
    try:
        job = store.get(job_id)
        if job.worker != worker or job.status != JobStatus.RUNNING:
            return 0  # not ours (any more): nothing to do
        if catalog.exists(job.fine_tuned_model):  # published before a crash: it is done
            version = catalog.resolve(job.fine_tuned_model)
            store.finish(job.id, worker, JobStatus.SUCCEEDED,
                         fine_tuned_model=job.fine_tuned_model,
                         trained_tokens=(version.metrics.get("train") or {}).get("tokens"),
                         event="The job has successfully completed")
            return 0
        reporter = JobReporter(store, job, worker)
        try:
            result = finetune(train_config(catalog, job, threads=threads), catalog=catalog,
                              callbacks=[reporter], should_stop=stop.is_set)
        except RunInterrupted as exc:
            reporter._add(f"Stopped at step {exc.step} with a checkpoint")
            reporter.flush()
            return EXIT_STOPPED
        except LeaseLost:
            return 0
        except GptStoreError as exc:
            reporter.pending.clear()
            store.finish(job.id, worker, JobStatus.FAILED, level="error",
                         event=f"Fine-tuning failed: {exc.message}", error=_error(exc))
            return 1
        reporter.flush()
        record = result.record.to_dict()
        csv_bytes = results_csv(record)
        blob = catalog.blobs.put_bytes(csv_bytes)
        results = catalog.files.add(blob.digest, blob.size, filename="step_metrics.csv",
                                    purpose="fine-tune-results", owner=job.owner)
        store.finish(job.id, worker, JobStatus.SUCCEEDED, fine_tuned_model=result.name,
                     trained_tokens=result.record.train_tokens, record=_plain(record),
                     result_files=[results.id], event="The job has successfully completed")
        from gptstore.accounts.audit import record as audit

        audit(catalog.db, job.owner, "publish", result.ref, {"job": job.id, "base": job.model})
        return 0
    except Exception as exc:  # a bug or a broken store: the job fails with the reason
        traceback.print_exc()
        store.finish(job_id, worker, JobStatus.FAILED, level="error",
                     event=f"Fine-tuning failed: internal error {type(exc).__name__}: {exc}",
                     error={"code": "internal_error", "param": None,
                            "message": f"internal error {type(exc).__name__}: {exc}; the "
                                       "server log has the details"})
        return 1
    finally:
        catalog.close()


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(doc, default=str))


def exit_with_worker(worker_pid: int, interval: float = 0.5) -> None:
    """Die when the worker that started this process dies (SIGKILL, a lost machine's
    process tree): its lease then runs out and another worker resumes the job from its
    last checkpoint, with no orphan still training the same job.

    The process is a child of the worker's fork server, which multiprocessing keeps
    alive while any of its children holds the server's "alive" pipe; that end is closed
    here, so the server exits with the worker and this process is re-parented. Either
    sign (a new parent, or the worker gone or a zombie) ends the process."""
    import multiprocessing.forkserver as forkserver

    alive = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
        forkserver._forkserver._forkserver_alive_fd = None  # type: ignore[attr-defined]
    parent = os.getppid()

    def worker_alive() -> bool:
        try:
            stat = Path(f"/proc/{worker_pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent or not worker_alive():
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()


def process_main(settings: dict[str, Any], job_id: str, worker: str, threads: int | None,
                 log_path: str, worker_pid: int) -> None:
    """The job process's entry point (forked by the worker's fork server, which has torch
    and transformers imported already): its own session, its log, then `run_job`."""
    os.setsid()  # its own process group: the worker stops it as a whole
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    config = Settings.model_validate(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides, not a terminal's ^C
    with contextlib.suppress(OSError):  # requests to the server keep their CPU share
        os.nice(config.job_nice)
    exit_with_worker(worker_pid)
    print(f"job {job_id} on {worker}, pid {os.getpid()}, home {config.home}", flush=True)
    code = run_job(config, job_id, worker, threads=threads, stop=stop)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no atexit work of the fork server's interpreter
