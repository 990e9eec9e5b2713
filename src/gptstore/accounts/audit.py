"""The audit log: who created, published, deleted, downloaded or changed the visibility
of what, and when. Append only; written by the front ends (CLI, API, job worker), which
know the actor, read by `gptstore audit`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from gptstore.accounts.tables import AuditEvent
from gptstore.storage.db import Database

#: the actions recorded
ACTIONS = ("create", "publish", "delete", "download", "visibility", "edit", "upload",
           "key-create", "key-revoke", "user-create", "org-create", "member")


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None
    request_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "target": self.target, "detail": self.detail, "request_id": self.request_id}


def record(db: Database, actor: str, action: str, target: str,
           detail: dict[str, Any] | None = None, *, request_id: str | None = None) -> None:
    assert action in ACTIONS, action
    with db.session(write=True) as session:
        session.add(AuditEvent(actor=actor[:96], action=action, target=target[:255],
                               detail=detail, request_id=request_id))


def entries(db: Database, *, actor: str | None = None, since: datetime | None = None,
            limit: int = 1000) -> list[AuditEntry]:
    """Newest last."""
    query = select(AuditEvent)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    query = query.order_by(AuditEvent.id.desc()).limit(limit)
    with db.session() as session:
        rows = list(session.scalars(query))
    return [AuditEntry(r.at if r.at.tzinfo else r.at.replace(tzinfo=UTC), r.actor, r.action,
                       r.target, r.detail, r.request_id) for r in reversed(rows)]
