"""Job statuses and the moves between them.

    validating_files -> queued -> running -> succeeded
           |              |         |  \\-> failed
           v              v         v
         failed        paused <-- (pause) -- resume --> queued
      any unfinished state -- cancel --> cancelled

A running job whose worker stops renewing its lease stays `running` and is taken over
by another worker (it resumes from its last checkpoint). OpenAI's statuses plus
`paused` (OpenAI's pause / resume endpoints).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: statuses a cancel ends at once (no process to stop)
CANCEL_AT_ONCE = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.PAUSED})
#: statuses a pause ends at once
PAUSE_AT_ONCE = frozenset({JobStatus.VALIDATING_FILES, JobStatus.QUEUED})

#: exit status of a job process that stopped on request after saving a checkpoint
EXIT_STOPPED = 3
