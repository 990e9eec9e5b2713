"""Evaluation suites and their results, in the catalog.

A suite is a named bundle: data (one blob, like an uploaded file), the task, the prompt
format (`evaluation.prompting.PromptFormat` as JSON), the metric that ranks models and
whether higher is better. A result is one version's metrics on one suite, stamped with
the digest of the data it was measured on: a leaderboard compares only results on the
suite's current data (like with like).

Owns the two tables (`eval_suites`, `eval_results`, migration 0003), their frozen
`SuiteInfo` / `ResultInfo`, and the card's `model-index` entries built from results
(`card_with_results`): versions are immutable, so their stored card is not rewritten;
results measured later are merged into the card when it is read.

Does not run models (`evaluation/suites.py` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from gptstore.catalog.cards import parse_card
from gptstore.catalog.tables import Base, utcnow
from gptstore.errors import Conflict, InvalidRequest, NotFound

SUITE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class EvalSuite(Base):
    __tablename__ = "eval_suites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    task: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    data_digest: Mapped[str] = mapped_column(String(71))
    data_name: Mapped[str] = mapped_column(String(255))
    examples: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metric: Mapped[str] = mapped_column(String(64))
    higher_is_better: Mapped[bool] = mapped_column(Boolean, default=True)
    license: Mapped[str | None] = mapped_column(String(128), nullable=True)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalResult(Base):
    __tablename__ = "eval_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("eval_suites.id", ondelete="CASCADE"),
                                          index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"),
                                            index=True)
    data_digest: Mapped[str] = mapped_column(String(71))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # the suite's metric
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    mode: Mapped[str] = mapped_column(String(32))
    examples: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class SuiteInfo:
    id: int
    name: str
    task: str
    description: str
    data_digest: str
    data_name: str
    examples: int
    prompt: dict[str, Any]
    metric: str
    higher_is_better: bool
    license: str | None
    source: str | None
    builtin: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "id"}


@dataclass(frozen=True)
class ResultInfo:
    suite: str
    version_id: int
    data_digest: str
    score: float | None
    metrics: dict[str, Any]
    mode: str
    examples: int
    seconds: float
    created_at: datetime


def _suite_info(row: EvalSuite) -> SuiteInfo:
    return SuiteInfo(row.id, row.name, row.task, row.description, row.data_digest,
                     row.data_name, row.examples, dict(row.prompt or {}), row.metric,
                     row.higher_is_better, row.license, row.source, row.builtin)


def _result_info(row: EvalResult, suite: str) -> ResultInfo:
    return ResultInfo(suite, row.version_id, row.data_digest, row.score, dict(row.metrics),
                      row.mode, row.examples, row.seconds, row.created_at)


def check_suite_name(name: str) -> str:
    if not SUITE_NAME.fullmatch(name):
        raise InvalidRequest(f"suite name {name!r} is not valid: use 1-64 lower-case letters, "
                             "digits, '.', '_' or '-', starting with a letter or digit",
                             param="suite")
    return name


def check_eval_suite(catalog: Any, name: str) -> None:
    """`eval_suite` of a fine-tune names a suite (checked before hours of training)."""
    try:
        Evaluations(catalog).get_suite(name)
    except NotFound as exc:
        raise InvalidRequest(f"eval_suite: {exc.message}", param="eval_suite") from exc


class Evaluations:
    """Suites and results of one catalog (`Evaluations(catalog)`)."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.db = catalog.db
        self.blobs = catalog.blobs

    # -- suites -------------------------------------------------------------------------

    def add_suite(self, name: str, data: Path, *, task: str, examples: int, metric: str,
                  higher_is_better: bool = True, prompt: dict[str, Any] | None = None,
                  description: str = "", license: str | None = None,
                  source: str | None = None, builtin: bool = False,
                  replace: bool = False) -> SuiteInfo:
        """Store `data` as a blob and the suite's row. An existing name is a Conflict
        unless `replace` (its results stay, stamped with the old data's digest)."""
        check_suite_name(name)
        blob = self.blobs.put_file(Path(data))
        with self.db.session(write=True) as session:
            row = session.scalars(select(EvalSuite).where(EvalSuite.name == name)).first()
            if row is not None and not replace:
                raise Conflict(f"suite {name} already exists; pick another name",
                               param="suite")
            if row is None:
                row = EvalSuite(name=name)
                session.add(row)
            row.task, row.description, row.data_digest = task, description, blob.digest
            row.data_name, row.examples, row.prompt = Path(data).name, examples, prompt or {}
            row.metric, row.higher_is_better = metric, higher_is_better
            row.license, row.source, row.builtin = license, source, builtin
            session.flush()
            return _suite_info(row)

    def get_suite(self, name: str) -> SuiteInfo:
        with self.db.session() as session:
            row = session.scalars(select(EvalSuite).where(EvalSuite.name == name)).first()
            if row is None:
                known = ", ".join(s.name for s in self.list_suites()) or "none yet"
                raise NotFound(f"no evaluation suite {name!r} (suites: {known}); "
                               "`gptstore suites builtin` adds the built-in ones",
                               param="suite")
            return _suite_info(row)

    def list_suites(self) -> list[SuiteInfo]:
        with self.db.session() as session:
            return [_suite_info(r) for r in session.scalars(select(EvalSuite)
                                                            .order_by(EvalSuite.name))]

    def suite_data(self, suite: SuiteInfo) -> Path:
        """A path to the suite's data (a link named like the original file, so readers
        that go by the extension work)."""
        folder = self.catalog.settings.home / "suites" / suite.data_digest.split(":", 1)[1]
        target = folder / suite.data_name
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{suite.data_name}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.blobs.path(suite.data_digest))
            tmp.replace(target)
        return target

    # -- results ------------------------------------------------------------------------

    def record(self, suite: SuiteInfo, version_id: int, *, data_digest: str,
               metrics: dict[str, Any], mode: str, examples: int,
               seconds: float) -> ResultInfo:
        """One version's result on a suite; a newer result on the same data replaces it."""
        score = metrics.get(suite.metric)
        with self.db.session(write=True) as session:
            for old in session.scalars(select(EvalResult).where(
                    EvalResult.suite_id == suite.id, EvalResult.version_id == version_id,
                    EvalResult.data_digest == data_digest)):
                session.delete(old)
            row = EvalResult(suite_id=suite.id, version_id=version_id, data_digest=data_digest,
                             score=float(score) if isinstance(score, int | float) else None,
                             metrics=metrics, mode=mode, examples=examples, seconds=seconds)
            session.add(row)
            session.flush()
            return _result_info(row, suite.name)

    def results_of_suite(self, suite: SuiteInfo) -> list[ResultInfo]:
        """Results on the suite's current data, best first."""
        with self.db.session() as session:
            rows = session.scalars(select(EvalResult).where(
                EvalResult.suite_id == suite.id, EvalResult.data_digest == suite.data_digest))
            results = [_result_info(r, suite.name) for r in rows]
        sign = -1.0 if suite.higher_is_better else 1.0
        return sorted(results, key=lambda r: (r.score is None, sign * (r.score or 0.0)))

    def card_of(self, version: Any, card: str) -> str:
        """`card` with this version's evaluation results in its model-index."""
        pairs = self.results_of_versions([version.id])[version.id]
        if not pairs:
            return card
        meta, _ = parse_card(card)
        return card_with_results(card, version.model,
                                 str(meta.get("pipeline_tag", "text-generation")), pairs)

    def results_of_versions(self, version_ids: list[int]
                            ) -> dict[int, list[tuple[SuiteInfo, ResultInfo]]]:
        """Every result of these versions with its suite, in one query, by suite name."""
        out: dict[int, list[tuple[SuiteInfo, ResultInfo]]] = {v: [] for v in version_ids}
        if not version_ids:
            return out
        with self.db.session() as session:
            rows = session.execute(select(EvalResult, EvalSuite).join(
                EvalSuite, EvalSuite.id == EvalResult.suite_id).where(
                EvalResult.version_id.in_(version_ids)).order_by(EvalSuite.name,
                                                                 EvalResult.id))
            for result, suite in rows:
                out[result.version_id].append((_suite_info(suite),
                                               _result_info(result, suite.name)))
        return out


def card_with_results(card: str, model_name: str, pipeline_tag: str,
                      results: list[tuple[SuiteInfo, ResultInfo]]) -> str:
    """The card with one `model-index` result per suite evaluation (Hugging Face's
    format: task, dataset with its digest as revision, numeric metrics)."""
    if not results:
        return card
    meta, body = parse_card(card)
    index = meta.get("model-index") or [{"name": model_name, "results": []}]
    entries = index[0].setdefault("results", [])
    for suite, result in results:
        numbers = {k: v for k, v in result.metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        entries.append({
            "task": {"type": pipeline_tag},
            "dataset": {"name": suite.name, "type": f"gptstore-suite/{suite.name}",
                        "revision": result.data_digest},
            "metrics": [{"type": k, "value": float(v), "name": f"{k} ({result.mode})"}
                        for k, v in sorted(numbers.items())],
        })
    meta["model-index"] = index
    text = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{text}---\n{body}"


def leaderboard(catalog: Any, name: str, *, principal: Any = None) -> dict[str, Any]:
    """A suite's leaderboard: the suite, then one row per version evaluated on its
    current data that `principal` may read; base models first, then by the suite's
    metric. Each row links to its version and its base (the lineage)."""
    from gptstore.catalog.access import SYSTEM

    evaluations = Evaluations(catalog)
    suite = evaluations.get_suite(name)
    rows: list[dict[str, Any]] = []
    for result in evaluations.results_of_suite(suite):
        try:
            version = catalog.get_version(result.version_id, principal=principal or SYSTEM)
        except NotFound:
            continue  # not readable by this caller: the row is not shown
        namespace, model = version.model.split("/", 1)
        dataset = version.lineage.get("dataset")
        rows.append({
            "model": version.model, "version": version.number, "ref": version.ref,
            "is_base": version.base_version_id is None, "base": version.base,
            "kind": version.kind, "task": version.task, "score": result.score,
            "metrics": result.metrics, "mode": result.mode, "examples": result.examples,
            "data_digest": result.data_digest, "evaluated_at": result.created_at,
            "url": f"/api/models/{namespace}/{model}/versions/{version.number}",
            "lineage": {"base": version.base,
                        "training_data": dataset.get("digest")
                        if isinstance(dataset, dict) else None,
                        "method": version.lineage.get("method")},
        })
    rows.sort(key=lambda row: not row["is_base"])  # stable: keeps the metric order
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return {"suite": suite.to_dict(), "rows": rows}
