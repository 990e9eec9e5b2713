"""Every read and write of job rows: the database is the queue.

Claiming a job is one short write transaction: `SELECT ... FOR UPDATE SKIP LOCKED` on
PostgreSQL (concurrent workers skip each other's rows instead of waiting), and on
SQLite the write transaction itself (`BEGIN IMMEDIATE` serialises writers, so two
claims cannot see the same row as free). A claimed job carries its worker's id and a
lease deadline; the worker renews it with heartbeats (`heartbeat`), and every later
write a worker makes names itself, so a worker that lost its lease (it stalled, another
worker took the job over) cannot overwrite the new holder's state.

Events are appended in batches; ids grow, so `after` pagination is a plain comparison.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from gptstore.catalog.tables import utcnow
from gptstore.errors import Conflict, InvalidRequest, NotFound
from gptstore.jobs.states import CANCEL_AT_ONCE, FINISHED, PAUSE_AT_ONCE, JobStatus
from gptstore.jobs.tables import Job, JobCheckpoint, JobEvent
from gptstore.storage.db import Database

EVENT_PREFIX = "ftevent-"


@dataclass(frozen=True)
class JobInfo:
    """A job row, detached from the database session."""

    id: str
    owner: str
    status: JobStatus
    model: str
    training_file: str
    validation_file: str | None
    fine_tuned_model: str
    suffix: str | None
    seed: int
    config: dict[str, Any]
    hyperparameters: dict[str, Any]
    metadata: dict[str, Any] | None
    error: dict[str, Any] | None
    result_files: list[str]
    trained_tokens: int | None
    record: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    estimated_finish: datetime | None
    worker: str | None
    lease_expires_at: datetime | None
    attempts: int
    takeovers: int
    cancel_requested: bool
    pause_requested: bool


def _info(row: Job) -> JobInfo:
    return JobInfo(
        id=row.id, owner=row.owner, status=JobStatus(row.status), model=row.model,
        training_file=row.training_file, validation_file=row.validation_file,
        fine_tuned_model=row.fine_tuned_model, suffix=row.suffix, seed=row.seed,
        config=dict(row.config or {}), hyperparameters=dict(row.hyperparameters or {}),
        metadata=row.metadata_, error=row.error,
        result_files=list(row.result_files or []), trained_tokens=row.trained_tokens,
        record=row.record, created_at=row.created_at, started_at=row.started_at,
        finished_at=row.finished_at, estimated_finish=row.estimated_finish,
        worker=row.worker, lease_expires_at=row.lease_expires_at, attempts=row.attempts,
        takeovers=row.takeovers,
        cancel_requested=row.cancel_requested, pause_requested=row.pause_requested)


@dataclass(frozen=True)
class EventInfo:
    id: str
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class CheckpointInfo:
    id: str
    job_id: str
    step_number: int
    model: str
    metrics: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class NewEvent:
    """An event to append."""

    message: str
    level: str = "info"
    type: str = "message"
    data: dict[str, Any] | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Flags:
    """What a heartbeat learns: the caller's requests for the running job."""

    cancel: bool
    pause: bool


def new_job_id() -> str:
    return f"ftjob-{secrets.token_hex(12)}"


def _event_id(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.startswith(EVENT_PREFIX) or not raw[len(EVENT_PREFIX):].isdigit():
        raise InvalidRequest(f"after must be an event id such as {EVENT_PREFIX}12, got "
                             f"{raw!r}", param="after")
    return int(raw[len(EVENT_PREFIX):])


class JobStore:
    """Job rows over one database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- creating and reading -------------------------------------------------------------

    def create(self, *, owner: str, model: str, training_file: str,
               validation_file: str | None, fine_tuned_model: str, suffix: str | None,
               seed: int, config: dict[str, Any], hyperparameters: dict[str, Any],
               metadata: dict[str, Any] | None, job_id: str | None = None) -> JobInfo:
        """A new job in `validating_files`, with its first event, in one transaction."""
        with self.db.session(write=True) as session:
            row = Job(id=job_id or new_job_id(), owner=owner,
                      status=JobStatus.VALIDATING_FILES, model=model,
                      training_file=training_file, validation_file=validation_file,
                      fine_tuned_model=fine_tuned_model, suffix=suffix, seed=seed,
                      config=config, hyperparameters=hyperparameters, metadata_=metadata,
                      result_files=[], attempts=0, takeovers=0,
                      cancel_requested=False, pause_requested=False)
            session.add(row)
            session.flush()
            session.add(JobEvent(job_id=row.id, level="info", type="message",
                                 message=f"Created fine-tuning job: {row.id}"))
            return _info(row)

    def get(self, job_id: str) -> JobInfo:
        with self.db.session() as session:
            return _info(self._row(session, job_id))

    @staticmethod
    def _row(session: Session, job_id: str) -> Job:
        row = session.get(Job, job_id) if isinstance(job_id, str) else None
        if row is None:
            raise NotFound(f"fine-tuning job {job_id} does not exist", param="fine_tuning_job_id")
        return row

    def page(self, *, owner: str | None = None, after: str | None = None, limit: int = 20,
             metadata: dict[str, str] | None = None) -> tuple[list[JobInfo], bool]:
        """Jobs newest first, after the job id `after`; returns (jobs, has_more)."""
        with self.db.session() as session:
            query = select(Job)
            if owner is not None:
                query = query.where(Job.owner == owner)
            if after is not None:
                anchor = self._row(session, after)
                query = query.where(or_(Job.created_at < anchor.created_at, and_(
                    Job.created_at == anchor.created_at, Job.id < anchor.id)))
            query = query.order_by(Job.created_at.desc(), Job.id.desc())
            rows: Sequence[Job] = session.scalars(query).all() if metadata else \
                session.scalars(query.limit(limit + 1)).all()
            if metadata:  # JSON columns compare differently per database: filter here
                rows = [r for r in rows if all((r.metadata_ or {}).get(k) == v
                                               for k, v in metadata.items())][:limit + 1]
            return [_info(r) for r in rows[:limit]], len(rows) > limit

    def events(self, job_id: str, *, after: str | None = None, limit: int = 20
               ) -> tuple[list[EventInfo], bool]:
        """The job's events newest first (OpenAI's order), older than `after`."""
        cursor = _event_id(after)
        with self.db.session() as session:
            self._row(session, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if cursor is not None:
                query = query.where(JobEvent.id < cursor)
            rows = session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)).all()
            return [EventInfo(f"{EVENT_PREFIX}{r.id}", r.created_at, r.level, r.type,
                              r.message, r.data) for r in rows[:limit]], len(rows) > limit

    def events_since(self, job_id: str, last_seen: str | None = None, *, limit: int = 1000
                     ) -> list[EventInfo]:
        """Events newer than the event id `last_seen`, oldest first (for following a job)."""
        cursor = _event_id(last_seen) or 0
        with self.db.session() as session:
            self._row(session, job_id)
            rows = session.scalars(select(JobEvent).where(
                JobEvent.job_id == job_id, JobEvent.id > cursor)
                .order_by(JobEvent.id).limit(limit)).all()
            return [EventInfo(f"{EVENT_PREFIX}{r.id}", r.created_at, r.level, r.type,
                              r.message, r.data) for r in rows]

    def checkpoints(self, job_id: str, *, after: str | None = None, limit: int = 10
                    ) -> tuple[list[CheckpointInfo], bool]:
        """The job's checkpoints, latest step first, after the checkpoint id `after`."""
        with self.db.session() as session:
            self._row(session, job_id)
            query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
            if after is not None:
                anchor = session.get(JobCheckpoint, after)
                if anchor is None or anchor.job_id != job_id:
                    raise NotFound(f"checkpoint {after} (the `after` cursor) is not a "
                                   f"checkpoint of {job_id}", param="after")
                query = query.where(JobCheckpoint.step_number < anchor.step_number)
            rows = session.scalars(query.order_by(JobCheckpoint.step_number.desc())
                                   .limit(limit + 1)).all()
            return [CheckpointInfo(r.id, r.job_id, r.step_number, r.model, dict(r.metrics),
                                   r.created_at) for r in rows[:limit]], len(rows) > limit

    def check_file_unused(self, file_id: str) -> None:
        """Refuse to let a file go while an unfinished job still reads it."""
        with self.db.session() as session:
            job = session.scalars(select(Job.id).where(
                or_(Job.training_file == file_id, Job.validation_file == file_id),
                Job.status.not_in([s.value for s in FINISHED])).limit(1)).first()
        if job is not None:
            raise Conflict(f"file {file_id} is the data of job {job}, which has not "
                           "finished; cancel the job or wait for it", param="file_id")

    def count_unfinished(self, owner: str) -> int:
        """Jobs of `owner` not yet succeeded, failed or cancelled."""
        finished = [status.value for status in FINISHED]
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(Job).where(
                Job.owner == owner, Job.status.not_in(finished))) or 0)

    def count_by_status(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            return {status: int(n) for status, n in rows}

    # -- what callers ask for -------------------------------------------------------------

    def request_cancel(self, job_id: str) -> JobInfo:
        """Cancel: at once when nothing runs it, else the worker stops its process."""
        with self.db.session(write=True) as session:
            row = self._row(session, job_id)
            status = JobStatus(row.status)
            if status in FINISHED:
                if status == JobStatus.CANCELLED:
                    return _info(row)
                raise Conflict(f"job {job_id} has already {status.value}; only an unfinished "
                               "job can be cancelled", param="fine_tuning_job_id")
            if status in CANCEL_AT_ONCE:
                self._finish(session, row, JobStatus.CANCELLED)
                session.add(JobEvent(job_id=row.id, message="Job cancelled"))
            elif not row.cancel_requested:
                row.cancel_requested = True
                session.add(JobEvent(job_id=row.id, message="Cancelling the running job"))
            return _info(row)

    def request_pause(self, job_id: str) -> JobInfo:
        with self.db.session(write=True) as session:
            row = self._row(session, job_id)
            status = JobStatus(row.status)
            if status in PAUSE_AT_ONCE:
                row.status = JobStatus.PAUSED
                session.add(JobEvent(job_id=row.id, message="Job paused"))
            elif status == JobStatus.RUNNING:
                if not row.pause_requested:
                    row.pause_requested = True
                    session.add(JobEvent(job_id=row.id, message="Pausing: the job stops "
                                         "after its current step and saves a checkpoint"))
            elif status != JobStatus.PAUSED:
                raise Conflict(f"job {job_id} is {status.value}; only a queued or running "
                               "job can be paused", param="fine_tuning_job_id")
            return _info(row)

    def resume(self, job_id: str) -> JobInfo:
        with self.db.session(write=True) as session:
            row = self._row(session, job_id)
            if row.status != JobStatus.PAUSED:
                raise Conflict(f"job {job_id} is {row.status}; only a paused job can be "
                               "resumed", param="fine_tuning_job_id")
            row.status = JobStatus.QUEUED
            row.pause_requested = False
            session.add(JobEvent(job_id=row.id, message="Job resumed: queued to continue "
                                 "from its last checkpoint"))
            return _info(row)

    # -- the queue ------------------------------------------------------------------------

    def claim(self, worker: str, *, lease_seconds: float, max_per_owner: int | None,
              statuses: Iterable[JobStatus] = (JobStatus.QUEUED,),
              takeover: bool = True) -> JobInfo | None:
        """The oldest job in `statuses` (or a running one whose lease expired, when
        `takeover`), leased to `worker`; None when there is none to take."""
        now = utcnow()
        wanted = [s.value for s in statuses]
        with self.db.session(write=True) as session:
            free = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
            condition = and_(Job.status.in_(wanted), free)
            if takeover:
                condition = or_(condition, and_(Job.status == JobStatus.RUNNING,
                                                Job.lease_expires_at < now))
            query = select(Job).where(condition)
            if max_per_owner is not None:  # owners at their limit wait
                busy = select(Job.owner).where(Job.status == JobStatus.RUNNING,
                                               Job.lease_expires_at >= now) \
                    .group_by(Job.owner).having(func.count() >= max_per_owner)
                query = query.where(Job.owner.not_in(busy))
            query = query.order_by(Job.created_at, Job.id).limit(1) \
                .with_for_update(skip_locked=True)
            row = session.scalars(query).first()
            if row is None:
                return None
            taken_over = row.status == JobStatus.RUNNING
            previous = row.worker
            row.worker = worker
            row.lease_expires_at = now + timedelta(seconds=lease_seconds)
            if row.status != JobStatus.VALIDATING_FILES:
                row.attempts += 1
                row.status = JobStatus.RUNNING
                row.started_at = row.started_at or now
            if taken_over:
                row.takeovers += 1
                session.add(JobEvent(job_id=row.id, level="warn", message=(
                    f"Worker {previous} stopped renewing its lease; {worker} takes the job "
                    "over and resumes it from its last checkpoint")))
            return _info(row)

    def heartbeat(self, job_id: str, worker: str, *, lease_seconds: float) -> Flags | None:
        """Renew `worker`'s lease; the caller's requests, or None when the lease is lost."""
        with self.db.session(write=True) as session:
            row = session.get(Job, job_id)
            if row is None or row.worker != worker or JobStatus(row.status) in FINISHED:
                return None
            row.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
            return Flags(cancel=row.cancel_requested, pause=row.pause_requested)

    def release(self, job_id: str, worker: str, status: JobStatus, *,
                event: str | None = None, level: str = "info") -> bool:
        """Give the job back (queued, paused, or validated into the queue) without
        finishing it; False when `worker` no longer holds it."""
        with self.db.session(write=True) as session:
            row = session.get(Job, job_id)
            if row is None or row.worker != worker or JobStatus(row.status) in FINISHED:
                return False
            row.status = status
            row.worker = None
            row.lease_expires_at = None
            if status == JobStatus.PAUSED:
                row.pause_requested = False
            if event:
                session.add(JobEvent(job_id=row.id, level=level, message=event))
            return True

    def finish(self, job_id: str, worker: str | None, status: JobStatus, *,
               event: str | None = None, level: str = "info", **values: Any) -> bool:
        """End the job in a finished `status` with `values` (error, fine_tuned_model,
        trained_tokens, record, result_files); False when `worker` no longer holds it."""
        assert status in FINISHED
        with self.db.session(write=True) as session:
            row = session.get(Job, job_id)
            if row is None or JobStatus(row.status) in FINISHED or (
                    worker is not None and row.worker != worker):
                return False
            for key, value in values.items():
                setattr(row, key, value)
            self._finish(session, row, status)
            if event:
                session.add(JobEvent(job_id=row.id, level=level, message=event))
            return True

    @staticmethod
    def _finish(session: Session, row: Job, status: JobStatus) -> None:
        row.status = status
        row.finished_at = utcnow()
        row.worker = None
        row.lease_expires_at = None
        row.estimated_finish = None

    # -- progress -------------------------------------------------------------------------

    def add_events(self, job_id: str, events: Sequence[NewEvent], *,
                   worker: str | None = None, **values: Any) -> bool:
        """Append events (and set `values`: estimated_finish, trained_tokens, ...) while
        `worker` holds the job; False when it does not any more."""
        with self.db.session(write=True) as session:
            row = session.get(Job, job_id)
            if row is None or (worker is not None and row.worker != worker):
                return False
            for key, value in values.items():
                setattr(row, key, value)
            session.add_all(JobEvent(job_id=job_id, level=e.level, type=e.type,
                                     message=e.message, data=e.data, created_at=e.created_at)
                            for e in events)
            return True

    def add_checkpoint(self, job_id: str, *, step: int, model: str, metrics: dict[str, Any]
                       ) -> bool:
        """Record a published checkpoint model (once per step: a resumed run that passes
        the same step again adds nothing)."""
        with self.db.session(write=True) as session:
            exists = session.scalars(select(JobCheckpoint.id).where(
                JobCheckpoint.job_id == job_id, JobCheckpoint.step_number == step)).first()
            if exists is not None:
                return False
            session.add(JobCheckpoint(id=f"ftckpt-{secrets.token_hex(12)}", job_id=job_id,
                                      step_number=step, model=model, metrics=metrics))
            return True
