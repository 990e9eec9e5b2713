"""The worker: validates new jobs' files, claims queued jobs and supervises each job's
process, in `gptstore worker` or inside `gptstore serve` (`GPTSTORE_WORKERS`).

Each claimed job runs in a child process (`runner.py`) in its own session, so the whole
process group can be stopped. While it runs the worker renews the job's lease about
once a second (`JobStore.heartbeat`), which also brings the caller's requests:

- cancel: the process group is killed at once (SIGKILL), the job ends `cancelled`
  within about a second; its events and checkpoints stay;
- pause: the process gets SIGTERM, finishes its step, saves a checkpoint and exits;
  the job is `paused` until resumed, then continues from that checkpoint;
- a lost lease (this worker stalled past the lease and another took the job over): the
  process is killed and the job left to its new holder.

A process that dies without writing an outcome (killed for memory, a crash in native
code) fails its job with the reason. When the worker itself stops (SIGTERM, server
shutdown) its jobs checkpoint and go back to the queue; when it is killed outright,
its leases run out and another worker resumes the jobs from their last checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gptstore.catalog.repository import Catalog
from gptstore.jobs.service import validate_job
from gptstore.jobs.states import EXIT_STOPPED, JobStatus
from gptstore.jobs.store import Flags, JobInfo, JobStore
from gptstore.settings import Settings

log = logging.getLogger(__name__)

#: how often a running job's lease is renewed and its flags read (seconds)
HEARTBEAT_SECONDS = 1.0
#: how long a job may take to checkpoint and exit after SIGTERM before it is killed
STOP_GRACE_SECONDS = 120.0
#: a job taken over more often than this (its workers kept dying) fails instead
MAX_TAKEOVERS = 5
#: how much of a dead job process's log goes into its error message
LOG_TAIL = 1500


#: what the fork server imports once, so a job process starts without paying for it
#: (torch + transformers + peft take 5-8 s to import on the 2-core machines)
PRELOAD = ["gptstore.jobs.runner", "gptstore.training.loop", "gptstore.inference.loader",
           "torch", "transformers", "peft"]
_context: multiprocessing.context.ForkServerContext | None = None
_context_lock = threading.Lock()


def _nothing() -> None:
    """A job process that does nothing (warms the fork server up)."""


def warm_fork_server() -> None:
    """Start the fork server and wait for its imports, with a process that does nothing."""
    proc = fork_server().Process(target=_nothing, name="gptstore-warm-up")
    proc.start()
    proc.join()


def fork_server() -> multiprocessing.context.ForkServerContext:
    """The process-wide fork server job processes are forked from. It is a fresh
    interpreter (not a fork of this one: no server threads, no engine, no OpenMP team
    copied), which imports `PRELOAD` once; each job is then a cheap fork of it."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _context = context
        return _context


@dataclass
class Child:
    job: JobInfo
    proc: multiprocessing.process.BaseProcess
    log_path: Path
    #: what the last heartbeat learnt (None: the lease is lost); set by the beat thread
    flags: Flags | None = field(default_factory=lambda: Flags(cancel=False, pause=False))
    stopping: str | None = None  # "pause" | "shutdown": SIGTERM was sent for this
    stop_sent: float = 0.0


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs up to `concurrency` jobs at once (see the module docstring)."""

    def __init__(self, settings: Settings, *, concurrency: int = 1,
                 name: str | None = None, poll_seconds: float = 0.5) -> None:
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self.name = name or worker_name()
        self.poll_seconds = poll_seconds
        self.lease = settings.job_lease_seconds
        self.children: dict[str, Child] = {}
        self._stop = threading.Event()
        self._beats_done = threading.Event()
        self._warm = False
        self._thread: threading.Thread | None = None
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // self.concurrency)  # torch threads of each job

    # -- running ----------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Run in a background thread (the server's in-process worker)."""
        self._thread = threading.Thread(target=self.run, name=f"gptstore-worker-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to stop: running jobs checkpoint and go back to the queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """The worker loop, until `stop()`."""
        catalog = Catalog(self.settings)
        store = JobStore(catalog.db)
        log.info("worker %s: up to %d job(s), %d thread(s) each", self.name,
                 self.concurrency, self.threads)
        beat = threading.Thread(target=self._beat, args=(store,), daemon=True,
                                name=f"gptstore-heartbeat-{self.name}")
        beat.start()
        try:
            while not self._stop.is_set():
                try:
                    self._step(catalog, store)
                except Exception:  # the database went away for a moment: keep going
                    log.exception("worker %s: loop error", self.name)
                self._stop.wait(self.poll_seconds)
        finally:
            self._shutdown(store)
            self._beats_done.set()
            beat.join()
            catalog.close()

    def _step(self, catalog: Catalog, store: JobStore) -> None:
        while (job := store.claim(self.name, lease_seconds=self.lease, max_per_owner=None,
                                  statuses=(JobStatus.VALIDATING_FILES,),
                                  takeover=False)) is not None:
            try:
                validate_job(catalog, store, job, self.name)
            except Exception as exc:  # a bug, not the user's file: fail it, keep going
                log.exception("worker %s: validating %s failed", self.name, job.id)
                self._fail(store, job, f"internal error while validating its files: "
                                       f"{type(exc).__name__}: {exc}")
        while len(self.children) < self.concurrency and not self._stop.is_set():
            if not self._warm:
                counts = store.count_by_status()
                if not counts.get(JobStatus.QUEUED.value) and \
                        not counts.get(JobStatus.RUNNING.value):  # nothing to run or take over
                    break
                # the fork server's imports take seconds: before the claim, so a job's
                # first fork cannot eat its lease (and servers without jobs skip it)
                warm_fork_server()
                self._warm = True
            job = store.claim(self.name, lease_seconds=self.lease,
                              max_per_owner=self.settings.max_jobs_per_owner)
            if job is None:
                break
            if job.takeovers > MAX_TAKEOVERS:  # its workers keep dying under it: stop
                self._fail(store, job, f"the job's worker stopped {job.takeovers} times "
                                       "while running it; see the job's log")
                continue
            try:
                self._spawn(job)
            except Exception as exc:
                log.exception("worker %s: starting %s failed", self.name, job.id)
                self._fail(store, job, f"could not start the training process: "
                                       f"{type(exc).__name__}: {exc}")
        for child in list(self.children.values()):
            self._supervise(store, child)

    def _fail(self, store: JobStore, job: JobInfo, message: str) -> None:
        store.finish(job.id, self.name, JobStatus.FAILED, level="error",
                     event=f"Fine-tuning failed: {message}",
                     error={"code": "internal_error", "param": None, "message": message})

    # -- one job's process --------------------------------------------------------------------

    def _spawn(self, job: JobInfo) -> None:
        logs = self.settings.runs_dir / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{job.id}.log"
        from gptstore.jobs.runner import process_main

        proc = fork_server().Process(
            target=process_main, name=f"gptstore-job-{job.id}", daemon=False,
            args=(self.settings.model_dump(mode="json"), job.id, self.name, self.threads,
                  str(log_path), os.getpid()))
        proc.start()
        assert proc.pid is not None
        self.children[job.id] = Child(job=job, proc=proc, log_path=log_path)
        log.info("worker %s: job %s started (pid %d, attempt %d)", self.name, job.id,
                 proc.pid, job.attempts)

    def _beat(self, store: JobStore) -> None:
        """Renew the leases of every running job each second, on a thread of its own, so
        a long step of the loop (a big file to validate, the first fork) never lets a
        lease run out; the flags it learns are acted on by the loop."""
        while not self._beats_done.wait(HEARTBEAT_SECONDS):
            for child in list(self.children.values()):
                try:
                    child.flags = store.heartbeat(child.job.id, self.name,
                                                  lease_seconds=self.lease)
                except Exception:  # the database went away for a moment: next beat
                    log.exception("worker %s: heartbeat of %s failed", self.name,
                                  child.job.id)

    def _supervise(self, store: JobStore, child: Child) -> None:
        code = child.proc.exitcode
        if code is not None:
            self._exited(store, child, code)
            return
        if child.stopping and time.monotonic() - child.stop_sent > STOP_GRACE_SECONDS:
            self._kill(child)  # it did not stop in time: its last checkpoint will do
            return
        flags = child.flags
        if flags is None:  # finished, or another worker holds the job now
            child.proc.join(timeout=2)
            if child.proc.exitcode is not None:
                self._exited(store, child, child.proc.exitcode)
                return
            log.warning("worker %s: lost the lease of %s; stopping its process", self.name,
                        child.job.id)
            self._kill(child)
            child.proc.join()
            del self.children[child.job.id]
        elif flags.cancel:
            self._kill(child)
            child.proc.join()
            del self.children[child.job.id]
            store.finish(child.job.id, self.name, JobStatus.CANCELLED, event="Job cancelled")
        elif flags.pause and child.stopping is None:
            self._terminate(child, "pause")

    def _exited(self, store: JobStore, child: Child, code: int) -> None:
        del self.children[child.job.id]
        job = child.job
        if code == EXIT_STOPPED:
            if child.stopping == "pause":
                store.release(job.id, self.name, JobStatus.PAUSED, event="Job paused")
            else:
                store.release(job.id, self.name, JobStatus.QUEUED, event=(
                    f"Worker {self.name} stopped; the job is queued again and resumes "
                    "from its checkpoint"))
            return
        if code == 0 or code == 1:
            # the process wrote the outcome; if it could not, say so
            store.finish(job.id, self.name, JobStatus.FAILED, level="error",
                         event="The training process ended without an outcome",
                         error={"code": "internal_error", "param": None, "message":
                                "the training process ended without an outcome; "
                                f"{self._tail(child)}"})
            return
        reason = f"exited with status {code}"
        if code < 0:
            name = signal.Signals(-code).name
            reason = f"was killed by {name}" + (
                " (most likely the machine ran out of memory)" if name == "SIGKILL" else "")
        if child.stopping == "shutdown":
            store.release(job.id, self.name, JobStatus.QUEUED, event=(
                f"Worker {self.name} stopped; the job resumes from its last checkpoint"))
            return
        message = f"the training process {reason}; {self._tail(child)}"
        store.finish(job.id, self.name, JobStatus.FAILED, level="error",
                     event=f"Fine-tuning failed: the training process {reason}",
                     error={"code": "internal_error", "param": None, "message": message})

    def _tail(self, child: Child) -> str:
        try:
            text = child.log_path.read_bytes()[-LOG_TAIL:].decode(errors="replace").strip()
        except OSError:
            return "no log"
        return f"last lines of its log: {text}" if text else "its log is empty"

    def _terminate(self, child: Child, why: str) -> None:
        child.stopping = why
        child.stop_sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[arg-type]

    @staticmethod
    def _kill(child: Child) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.proc.kill()  # also before it made its own process group

    def _shutdown(self, store: JobStore) -> None:
        """Running jobs checkpoint and go back to the queue (resumed by any worker)."""
        for child in self.children.values():
            if child.stopping is None:
                self._terminate(child, "shutdown")
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self.children and time.monotonic() < deadline:
            for child in list(self.children.values()):
                code = child.proc.exitcode
                if code is not None:
                    self._exited(store, child, code)
            time.sleep(0.1)
        for child in list(self.children.values()):
            self._kill(child)
            child.proc.join()
            self._exited(store, child, child.proc.exitcode or -signal.SIGKILL)
