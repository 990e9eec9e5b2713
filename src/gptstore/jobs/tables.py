"""Tables of the fine-tuning jobs service: jobs, their events and their checkpoints.

The `jobs` table is also the queue: workers claim rows (`queue.py`) and hold them with
a lease they renew while the job runs. The schema is changed only by migrations
(src/gptstore/migrations); these classes must match the newest migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gptstore.catalog.tables import Base, utcnow


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftjob-<24 hex>
    owner: Mapped[str] = mapped_column(String(96), index=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    model: Mapped[str] = mapped_column(String(200))  # the base, namespace/name@N
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    #: the store name the result is published under (decided when the job is created)
    fine_tuned_model: Mapped[str] = mapped_column(String(200))
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    #: the run's TrainConfig as the caller asked for it (files by id, `auto` kept)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: OpenAI's view of the hyper-parameters: as asked, then as resolved once it runs
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: the finished run (training/record.py), JSON
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    estimated_finish: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    # -- the queue ----------------------------------------------------------------------
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    takeovers: Mapped[int] = mapped_column(Integer, default=0)  # ... after one went silent
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan")
    checkpoints: Mapped[list[JobCheckpoint]] = relationship(
        back_populates="job", order_by="JobCheckpoint.step_number",
        cascade="all, delete-orphan")


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")  # info | warn | error
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    job: Mapped[Job] = relationship(back_populates="events")


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftckpt-<24 hex>
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    #: the checkpoint's weights, published as a store model of its own
    model: Mapped[str] = mapped_column(String(200))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoints")
