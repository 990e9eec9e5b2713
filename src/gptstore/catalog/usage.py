"""Usage counters: inference requests and downloads per model, per day, and the
trending score computed from them.

The server counts in memory (`UsageCounter`) and writes the counts in one transaction
every few seconds and at shutdown, so a busy model costs one row update per flush,
not one per request (a write per request would serialise every request on SQLite's
single writer). A crash loses at most one interval's counts: they are popularity
figures, not billing.

`record_usage` is the one writer: it adds to the model's totals (`downloads`,
`requests`), to its row of the day in `model_usage`, and recomputes the model's
`trending` score. Trending is the last 7 days of usage (requests + downloads), each day
weighted by half for every `HALF_LIFE_DAYS` of age, so a model used a lot today ranks
above one used as much last week. Scores also decay on days without usage:
`refresh_trending` recomputes every model with a score, which the counter does once per
UTC day.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from gptstore.catalog.names import parse_ref
from gptstore.catalog.tables import Model, ModelUsage, Namespace
from gptstore.errors import GptStoreError
from gptstore.storage.db import Database

log = logging.getLogger(__name__)

#: days of usage trending looks at, and how fast a day's weight halves
WINDOW_DAYS = 7
HALF_LIFE_DAYS = 2.0
#: seconds between two writes of the server's counts
FLUSH_SECONDS = 5.0


def today() -> date:
    return datetime.now(UTC).date()


def day_weight(age_days: int) -> float:
    """Weight of a day's usage `age_days` ago in the trending score (0 outside the
    window)."""
    if not 0 <= age_days < WINDOW_DAYS:
        return 0.0
    return float(0.5 ** (age_days / HALF_LIFE_DAYS))


def trending_scores(session: Session, model_ids: Iterable[int] | None, on: date
                    ) -> dict[int, float]:
    """The trending score of each model (of `model_ids`, or every model with usage in the
    window) on day `on`."""
    first = on - timedelta(days=WINDOW_DAYS - 1)
    query = select(ModelUsage.model_id, ModelUsage.day, ModelUsage.requests,
                   ModelUsage.downloads).where(ModelUsage.day >= first, ModelUsage.day <= on)
    if model_ids is not None:
        query = query.where(ModelUsage.model_id.in_(list(model_ids)))
    scores: dict[int, float] = {}
    for model_id, day, requests, downloads in session.execute(query):
        weight = day_weight((on - day).days)
        scores[model_id] = scores.get(model_id, 0.0) + weight * (requests + downloads)
    return scores


def _set_trending(session: Session, scores: Mapping[int, float]) -> None:
    if scores:  # one executemany (ORM bulk UPDATE by primary key), not a statement each
        session.execute(update(Model), [{"id": model_id, "trending": round(score, 6)}
                                        for model_id, score in scores.items()])


def _model_ids(session: Session, names: Iterable[str]) -> dict[str, int]:
    """Store names (`ns/name`, any `@version` ignored) -> model ids, in one query; names
    not in the store (removed meanwhile) are left out."""
    refs = {}
    for name in names:
        try:
            refs[name] = parse_ref(name)
        except GptStoreError:
            continue  # not a store name (the engine also serves local folders)
    if not refs:
        return {}
    pairs = {(r.namespace, r.name) for r in refs.values()}
    rows = session.execute(
        select(Namespace.name, Model.name, Model.id).join(Model.namespace)
        .where(or_(*(and_(Namespace.name == ns, Model.name == n) for ns, n in pairs)))
    ).all()
    ids = {(ns, n): model_id for ns, n, model_id in rows}
    return {name: ids[(r.namespace, r.name)] for name, r in refs.items()
            if (r.namespace, r.name) in ids}


def _upsert_day(session: Session, model_id: int, on: date, requests: int, downloads: int
                ) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE: two servers counting the same model on the same
    day add up instead of one failing on the primary key."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    statement = insert(ModelUsage).values(model_id=model_id, day=on, requests=requests,
                                          downloads=downloads)
    return statement.on_conflict_do_update(
        index_elements=[ModelUsage.model_id, ModelUsage.day],
        set_={"requests": ModelUsage.requests + statement.excluded.requests,
              "downloads": ModelUsage.downloads + statement.excluded.downloads})


def record_usage(db: Database, counts: Mapping[str, tuple[int, int]],
                 on: date | None = None) -> None:
    """Add `counts` (store name -> (requests, downloads)) to the totals and to day `on`
    (default today, UTC), and recompute those models' trending scores; one transaction."""
    on = on or today()
    with db.session(write=True) as session:
        ids = _model_ids(session, counts)
        per_model: dict[int, list[int]] = {}
        for name, model_id in ids.items():
            totals = per_model.setdefault(model_id, [0, 0])
            totals[0] += counts[name][0]
            totals[1] += counts[name][1]
        for model_id, (requests, downloads) in per_model.items():
            session.execute(update(Model).where(Model.id == model_id).values(
                requests=Model.requests + requests, downloads=Model.downloads + downloads))
            session.execute(_upsert_day(session, model_id, on, requests, downloads))
        _set_trending(session, trending_scores(session, per_model, on))


def refresh_trending(db: Database, on: date | None = None) -> int:
    """Recompute every score that may have changed by `on`: the models with usage in the
    window and those with a score (which may have aged out to 0). Returns how many."""
    on = on or today()
    with db.session(write=True) as session:
        scores = trending_scores(session, None, on)
        stale = session.scalars(select(Model.id).where(Model.trending > 0)).all()
        for model_id in stale:
            scores.setdefault(model_id, 0.0)
        _set_trending(session, scores)
        return len(scores)


class UsageCounter:
    """Counts in memory; a daemon thread writes them every `interval` seconds through
    `record_usage`, and `stop` writes what is left."""

    def __init__(self, db: Database, *, interval: float = FLUSH_SECONDS) -> None:
        self.db = db
        self.interval = interval
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._downloads: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed_on: date | None = None

    def count_request(self, model: str) -> None:
        with self._lock:
            self._requests[model] += 1

    def count_download(self, model: str) -> None:
        with self._lock:
            self._downloads[model] += 1

    def pending(self) -> int:
        with self._lock:
            return sum(self._requests.values()) + sum(self._downloads.values())

    def flush(self) -> None:
        """Write the counts so far (and, once a day, decay every trending score)."""
        with self._lock:
            requests, downloads = self._requests, self._downloads
            self._requests, self._downloads = Counter(), Counter()
        names = set(requests) | set(downloads)
        if names:
            try:
                record_usage(self.db, {n: (requests[n], downloads[n]) for n in names})
            except Exception:
                # Keep the counts for the next flush rather than lose them to a busy
                # database; the server must not fail a request over a counter.
                log.exception("writing usage counts failed; retrying at the next flush")
                with self._lock:
                    self._requests.update(requests)
                    self._downloads.update(downloads)
                return
        if self._refreshed_on != today():
            refresh_trending(self.db)
            self._refreshed_on = today()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gptstore-usage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:
                log.exception("usage flush failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
