"""The catalog repository: models, versions and their files, over the database and the
blob store.

Publishing is ordered so that nothing half-written is ever visible:

1. every file is written to the blob store (temp file, hash, fsync, rename);
2. the model card and the manifest are written as blobs too;
3. one database transaction inserts the model (if new), the version and its file rows.

A process killed before step 3 commits leaves only unreferenced blobs, which no query
sees and `gc` removes; a killed transaction is rolled back by the database.

Every read takes the `Principal` asking (`catalog/access.py`, default `SYSTEM` for the
store's own code) and filters through its one rule; a model it may not read is missing.
Listings are keyset-paginated (`search_models`) and load only what a page shows: the
page's models and a summary of each one's latest version, never files or other versions.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Float, Integer, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, contains_eager, selectinload

from gptstore.catalog import search as text_search
from gptstore.catalog.access import PUBLIC, SYSTEM, VISIBILITIES, Principal, readable_by
from gptstore.catalog.cards import CardData, headline_metrics, parse_card, render_card
from gptstore.catalog.files import FileRepository
from gptstore.catalog.names import ModelRef, parse_ref
from gptstore.catalog.tables import Model, Namespace, Version, VersionFile, utcnow
from gptstore.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, StorageError
from gptstore.settings import Settings
from gptstore.storage.blobs import BlobStore, GcResult
from gptstore.storage.db import Database
from gptstore.storage.manifest import FileEntry, Manifest
from gptstore.tasks import TASKS

CARD_FILE = "README.md"

#: page sizes of `search_models` (the HTTP API documents the same bounds)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class VersionSummaryInfo:
    """What a listing shows of a model's latest version: enough to choose, not to load."""

    number: int
    kind: str
    base: str | None  # namespace/name@N of the base version, for adapters and fine-tunes
    size: int
    metrics: dict[str, float]  # headline metrics (`cards.headline_metrics`), {} when none


@dataclass(frozen=True)
class VersionInfo:
    """A published version, as callers see it (detached from the database session)."""

    id: int
    model: str  # namespace/name
    number: int
    kind: str
    task: str
    manifest_digest: str
    base: str | None  # namespace/name@N of the base version, for adapters and fine-tunes
    base_version_id: int | None
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    size: int
    created_at: datetime
    files: tuple[FileEntry, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model}@{self.number}"

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise NotFound(f"{self.ref} has no file {path!r}")

    def has_file(self, path: str) -> bool:
        return any(entry.path == path for entry in self.files)

    def summary(self) -> VersionSummaryInfo:
        return VersionSummaryInfo(number=self.number, kind=self.kind, base=self.base,
                                  size=self.size, metrics=headline_metrics(self.metrics))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "model": self.model, "version": self.number, "kind": self.kind,
            "task": self.task, "manifest_digest": self.manifest_digest, "base": self.base,
            "lineage": self.lineage, "metrics": self.metrics, "size": self.size,
            "created_at": self.created_at.isoformat(),
            "files": [{"path": f.path, "digest": f.digest, "size": f.size} for f in self.files],
        }


@dataclass(frozen=True)
class _ModelFields:
    """What every view of a model shows (ModelSummaryInfo and ModelInfo)."""

    name: str  # namespace/name
    namespace: str
    task: str
    description: str
    tags: list[str]
    license: str | None
    visibility: str
    created_at: datetime  # aware, UTC
    updated_at: datetime  # aware, UTC: when the newest version was published
    downloads: int
    likes: int
    requests: int = 0  # inference requests served (catalog/usage.py)
    rating: float = 0.0  # mean of the 1-5 star ratings, 0 when unrated
    rating_count: int = 0


@dataclass(frozen=True)
class ModelSummaryInfo(_ModelFields):
    """A model as a listing shows it: its own fields and its latest version's summary."""

    latest: VersionSummaryInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """The shape of `gptstore models list --json` (`latest_version`: its number)."""
        return _model_doc(self, self.latest.number if self.latest else None)


@dataclass(frozen=True)
class ModelInfo(_ModelFields):
    """A model with all its versions and their files (one model's page)."""

    versions: list[VersionInfo] = field(default_factory=list)

    @property
    def latest(self) -> VersionInfo:
        return self.versions[-1]

    def summary(self) -> ModelSummaryInfo:
        shared = {f.name: getattr(self, f.name) for f in fields(_ModelFields)}
        return ModelSummaryInfo(**shared,
                                latest=self.versions[-1].summary() if self.versions else None)

    def to_dict(self, *, versions: bool = True) -> dict[str, Any]:
        doc = _model_doc(self, self.versions[-1].number if self.versions else None)
        if versions:
            doc["versions"] = [v.to_dict() for v in self.versions]
        return doc


@dataclass(frozen=True)
class ModelPageInfo:
    """One page of `Catalog.search_models`."""

    models: list[ModelSummaryInfo]
    next_cursor: str | None  # pass it back for the next page; None on the last page
    has_more: bool


def _model_doc(model: _ModelFields, latest_number: int | None) -> dict[str, Any]:
    return {
        "name": model.name, "namespace": model.namespace, "task": model.task,
        "description": model.description, "tags": model.tags, "license": model.license,
        "visibility": model.visibility, "created_at": model.created_at.isoformat(),
        "updated_at": model.updated_at.isoformat(), "downloads": model.downloads,
        "likes": model.likes, "latest_version": latest_number,
    }


def _utc(moment: datetime) -> datetime:
    """SQLite gives back the UTC wall time it stored, without a zone; PostgreSQL an aware
    datetime. Callers always get aware UTC (a naive one would be read as local time)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _ref(namespace: str, name: str, number: int) -> str:
    return f"{namespace}/{name}@{number}"


def _version_info(v: Version, *, with_files: bool = True) -> VersionInfo:
    base = None
    if v.base_version is not None:
        bv = v.base_version
        base = _ref(bv.model.namespace.name, bv.model.name, bv.number)
    files = tuple(FileEntry(f.path, f.digest, f.size) for f in v.files) if with_files else ()
    return VersionInfo(
        id=v.id,
        model=f"{v.model.namespace.name}/{v.model.name}",
        number=v.number,
        kind=v.kind,
        task=v.model.task,
        manifest_digest=v.manifest_digest,
        base=base,
        base_version_id=v.base_version_id,
        lineage=dict(v.lineage or {}),
        metrics=dict(v.metrics or {}),
        size=v.size,
        created_at=_utc(v.created_at),
        files=files,
    )


def _model_fields(m: Model) -> dict[str, Any]:
    return {
        "name": f"{m.namespace.name}/{m.name}",
        "namespace": m.namespace.name,
        "task": m.task,
        "description": m.description,
        "tags": list(m.tags or []),
        "license": m.license,
        "visibility": m.visibility,
        "created_at": _utc(m.created_at),
        "updated_at": _utc(m.updated_at),
        "downloads": m.downloads,
        "likes": m.likes,
        "requests": m.requests or 0,
        "rating": float(m.rating or 0.0),
        "rating_count": m.rating_count or 0,
    }


def _model_info(m: Model) -> ModelInfo:
    return ModelInfo(**_model_fields(m), versions=[_version_info(v) for v in m.versions])


def _version_options(query: Any) -> Any:
    """Load what a `VersionInfo` shows: files, the model's name, the base's name."""
    return query.options(
        selectinload(Version.files),
        selectinload(Version.model).selectinload(Model.namespace),
        selectinload(Version.base_version).selectinload(Version.model)
        .selectinload(Model.namespace),
    )


def _model_query() -> Any:
    return select(Model).options(
        selectinload(Model.namespace),
        selectinload(Model.versions).selectinload(Version.files),
        selectinload(Model.versions)
        .selectinload(Version.base_version)
        .selectinload(Version.model)
        .selectinload(Model.namespace),
    )


def _named(query: Any, ref: ModelRef, principal: Principal) -> Any:
    """`query` (over models) narrowed to the model `ref` names, if `principal` may read it."""
    return query.join(Model.namespace).where(
        Namespace.name == ref.namespace, Model.name == ref.name, readable_by(principal)
    )


def _find_model(session: Session, ref: ModelRef, principal: Principal = SYSTEM
                ) -> Model | None:
    return session.scalars(_named(_model_query(), ref, principal)).first()


def check_visibility(visibility: str) -> str:
    if visibility not in VISIBILITIES:
        raise InvalidRequest(f"visibility {visibility!r} is not one of "
                             f"{', '.join(VISIBILITIES)}", param="visibility")
    return visibility


def _not_in_store(ref: ModelRef) -> NotFound:
    # The same error for a missing model and for one the caller may not read.
    return NotFound(
        f"model {ref.full_name} is not in the store; see `gptstore models list` "
        "or pull / import it first",
        param="model",
    )


# -- keyset pagination ------------------------------------------------------------------
#
# A page ends at a row; the next page starts after that row's sort key. Unlike OFFSET,
# the cursor points at a place in the order, not a count of rows, so inserts and deletes
# before it neither repeat nor skip rows, and the database seeks instead of counting.
# Every sort key ends in the primary key, so the order is total and ties are stable.

SORT_KEYS: dict[str, tuple[tuple[Any, bool], ...]] = {  # (column, descending)
    "name": ((Namespace.name, False), (Model.name, False), (Model.id, False)),
    "updated": ((Model.updated_at, True), (Model.id, True)),
    "downloads": ((Model.downloads, True), (Namespace.name, False), (Model.name, False),
                  (Model.id, False)),
    "likes": ((Model.likes, True), (Namespace.name, False), (Model.name, False),
              (Model.id, False)),
    # the store front's (migration 0005): trending = decayed 7-day usage (catalog/usage.py).
    # Each key is exactly an index's columns (the id is the row id), so a page is an index
    # walk: a key that an index covers only in part makes SQLite sort every row that
    # passes the filter (the home page's shelves took 70-130 ms at 100,000 models).
    "trending": ((Model.trending, True), (Model.id, True)),
    "rating": ((Model.rating, True), (Model.rating_count, True), (Model.id, True)),
    "newest": ((Model.created_at, True), (Model.id, True)),
}
SORTS = tuple(SORT_KEYS)
_CURSOR_VERSION = 1
_MAX_CURSOR_CHARS = 2048


def _sort_key(sort: str) -> tuple[tuple[Any, bool], ...]:
    key = SORT_KEYS.get(sort)
    if key is None:
        raise InvalidRequest(f"unknown sort {sort!r}: use {', '.join(SORTS)}", param="sort")
    return key


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not (
            1 <= limit <= MAX_PAGE_SIZE):
        raise InvalidRequest(
            f"limit {limit!r} is out of range: use a whole number from 1 to {MAX_PAGE_SIZE}",
            param="limit",
        )
    return limit


def encode_cursor(sort: str, values: Sequence[Any]) -> str:
    """The opaque cursor after a row whose sort key (`SORT_KEYS[sort]`) is `values`."""
    key = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    doc = json.dumps({"v": _CURSOR_VERSION, "sort": sort, "key": key}, separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> list[Any]:
    """The sort key a cursor of `encode_cursor` holds, checked against `sort`'s columns.

    A cursor is opaque to clients; anything that is not one this store made for the same
    sort is refused with an error naming `cursor`, never passed to the database.
    """
    columns = _sort_key(sort)
    bad = InvalidRequest(
        "cursor is not one this store returned: pass `next_cursor` of the previous page "
        "unchanged, or leave cursor out to start at the first page",
        param="cursor",
    )
    if not cursor or len(cursor) > _MAX_CURSOR_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw.decode())
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError too
        raise bad from None
    if not isinstance(doc, dict) or doc.get("v") != _CURSOR_VERSION:
        raise bad
    if doc.get("sort") != sort:
        raise InvalidRequest(
            f"cursor belongs to sort={doc.get('sort')!r}, not sort={sort!r}: keep the sort "
            "of the first page while paging, or leave cursor out to start again",
            param="cursor",
        )
    key = doc.get("key")
    if not isinstance(key, list) or len(key) != len(columns):
        raise bad
    values: list[Any] = []
    for (column, _descending), value in zip(columns, key, strict=True):
        if isinstance(column.type, DateTime):
            if not isinstance(value, str):
                raise bad
            try:
                values.append(datetime.fromisoformat(value))
            except ValueError:
                raise bad from None
        elif isinstance(column.type, Integer):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            values.append(value)
        elif isinstance(column.type, Float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad
            values.append(float(value))
        elif not isinstance(value, str):
            raise bad
        else:
            values.append(value)
    return values


def _after(columns: Sequence[tuple[Any, bool]], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order of `columns` (mixed directions allowed):
    (c1 past v1) OR (c1 = v1 AND c2 past v2) OR ...

    The OR alone makes SQLite collect every later row through a multi-index OR and sort
    them (300 ms for page 2 of 100,000 models); the redundant bound "c1 not before v1"
    in front lets it walk c1's index from the cursor and stop after a page (tens of ms).
    """
    alternatives = []
    for i, (column, descending) in enumerate(columns):
        equal = [c == v for (c, _), v in zip(columns[:i], values[:i], strict=True)]
        past = column < values[i] if descending else column > values[i]
        alternatives.append(and_(*equal, past))
    first, descending = columns[0]
    bound = first <= values[0] if descending else first >= values[0]
    return and_(bound, or_(*alternatives))


def _latest_summaries(session: Session, model_ids: list[int]
                      ) -> dict[int, VersionSummaryInfo]:
    """The latest version's summary of each model, in one query: the columns a listing
    shows, not the lineage or the files."""
    if not model_ids:
        return {}
    newest = (
        select(Version.model_id, func.max(Version.number).label("number"))
        .where(Version.model_id.in_(model_ids))
        .group_by(Version.model_id)
        .subquery()
    )
    base, base_model, base_namespace = aliased(Version), aliased(Model), aliased(Namespace)
    query = (
        select(Version.model_id, Version.number, Version.kind, Version.size, Version.metrics,
               base_namespace.name, base_model.name, base.number)
        .join(newest, and_(Version.model_id == newest.c.model_id,
                           Version.number == newest.c.number))
        .outerjoin(base, Version.base_version_id == base.id)
        .outerjoin(base_model, base.model_id == base_model.id)
        .outerjoin(base_namespace, base_model.namespace_id == base_namespace.id)
    )
    out = {}
    for model_id, number, kind, size, metrics, base_ns, base_name, base_number in (
            session.execute(query)):
        out[model_id] = VersionSummaryInfo(
            number=number, kind=kind, size=size, metrics=headline_metrics(metrics or {}),
            base=_ref(base_ns, base_name, base_number) if base_number is not None else None,
        )
    return out


def _files_of(source_dir: Path) -> list[tuple[str, Path]]:
    files = []
    for path in sorted(source_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(source_dir).as_posix()
            if rel != CARD_FILE and not rel.startswith("."):
                files.append((rel, path))
    return files


class Catalog:
    """Models and versions in the database, their bytes in the blob store."""

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.settings = settings
        try:
            settings.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create GPTSTORE_HOME {settings.home}: {exc.strerror}; "
                "set GPTSTORE_HOME to a writable folder"
            ) from exc
        self.db = Database(settings.db_url)
        self.blobs = BlobStore(settings.blobs_dir)
        if migrate:
            self.db.migrate()
        self.files = FileRepository(settings, self.db, self.blobs)

    def close(self) -> None:
        self.db.dispose()

    # -- reading --------------------------------------------------------------------
    #
    # Each read takes `principal` (default SYSTEM: the store's own code and the CLI on
    # the local store) and sees only the models `access.readable_by` allows it; a model
    # it may not read raises the same NotFound as a missing one. A VersionInfo is the
    # result of such a read: `read_file` and `snapshot` trust whoever holds one.

    def search_models(
        self,
        *,
        task: str | None = None,
        search: str | None = None,
        sort: str = "name",
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
        principal: Principal = SYSTEM,
        text: str | None = None,
        base: str | None = None,
        tag: str | None = None,
        license: str | None = None,
        owner: str | None = None,
    ) -> ModelPageInfo:
        """One page of the models `principal` may read, in `sort` order (`SORTS`),
        starting after `cursor` (a page's `next_cursor`).

        `search` is a case-insensitive substring of `namespace/name` or the description
        (`%` and `_` match themselves); `text` a full-text query over names, description,
        tags and card (`catalog/search.py`: every word, as a prefix). `base` (the
        fine-tunes of a model), `tag`, `license` and `owner` (the namespace) filter by
        equality. Two queries per page: the page's models, then their latest versions'
        summaries.
        """
        columns = _sort_key(sort)
        limit = _check_limit(limit)
        if task and task not in TASKS:
            raise InvalidRequest(f"unknown task {task!r}: use {' or '.join(TASKS)}",
                                 param="task")
        after = decode_cursor(cursor, sort) if cursor is not None else None
        with self.db.session() as session:
            query = (
                select(Model, *(column for column, _ in columns))
                .join(Model.namespace)
                .options(contains_eager(Model.namespace))
                .where(readable_by(principal))
            )
            if task:
                query = query.where(Model.task == task)
            if text:
                matching = text_search.text_condition(session, text)
                if matching is not None:
                    query = query.where(matching)
            for condition in text_search.filter_conditions(base=base, tag=tag,
                                                           license=license, owner=owner):
                query = query.where(condition)
            if search:
                query = query.where(or_(
                    (Namespace.name + "/" + Model.name).icontains(search, autoescape=True),
                    Model.description.icontains(search, autoescape=True),
                ))
            if after is not None:
                query = query.where(_after(columns, after))
            order = [column.desc() if descending else column.asc()
                     for column, descending in columns]
            rows = session.execute(query.order_by(*order).limit(limit + 1)).all()
            has_more = len(rows) > limit
            rows = rows[:limit]
            latest = _latest_summaries(session, [row[0].id for row in rows])
            models = [ModelSummaryInfo(**_model_fields(row[0]), latest=latest.get(row[0].id))
                      for row in rows]
        next_cursor = encode_cursor(sort, tuple(rows[-1])[1:]) if has_more else None
        return ModelPageInfo(models=models, next_cursor=next_cursor, has_more=has_more)

    def list_models(self, *, task: str | None = None, search: str | None = None,
                    sort: str = "name", principal: Principal = SYSTEM
                    ) -> list[ModelSummaryInfo]:
        """Every model `principal` may read (all pages of `search_models`)."""
        models: list[ModelSummaryInfo] = []
        cursor = None
        while True:
            page = self.search_models(task=task, search=search, sort=sort,
                                      limit=MAX_PAGE_SIZE, cursor=cursor, principal=principal)
            models += page.models
            if not page.has_more:
                return models
            cursor = page.next_cursor

    def get_model(self, name: str | ModelRef, *, principal: Principal = SYSTEM) -> ModelInfo:
        """A model with all its versions and their files."""
        ref = parse_ref(name) if isinstance(name, str) else name
        with self.db.session() as session:
            model = _find_model(session, ref, principal)
            if model is None:
                raise _not_in_store(ref)
            return _model_info(model)

    def exists(self, name: str | ModelRef, *, principal: Principal = SYSTEM) -> bool:
        """Whether the model `name` (any version part is ignored) exists for `principal`."""
        ref = parse_ref(name) if isinstance(name, str) else name
        with self.db.session() as session:
            return session.scalar(_named(select(Model.id), ref, principal)) is not None

    def check_readable(self, name: str | ModelRef, *, principal: Principal = SYSTEM) -> None:
        """Raise the NotFound of a missing model unless `principal` may read the model
        `name` names: one query, for a gate in front of code that resolves the name as
        SYSTEM (the engine); the version part is left to that `resolve`."""
        ref = parse_ref(name) if isinstance(name, str) else name
        if not self.exists(ref, principal=principal):
            raise _not_in_store(ref)

    def resolve(self, ref: str | ModelRef, *, principal: Principal = SYSTEM) -> VersionInfo:
        """The version `ref` names: `namespace/name` (latest) or `namespace/name@N`."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with self.db.session() as session:
            model_id = session.scalar(_named(select(Model.id), parsed, principal))
            if model_id is None:
                raise _not_in_store(parsed)
            query = _version_options(select(Version).where(Version.model_id == model_id))
            if parsed.version is None:
                query = query.order_by(Version.number.desc()).limit(1)
            else:
                query = query.where(Version.number == parsed.version)
            version = session.scalars(query).first()
            if version is not None:
                return _version_info(version)
            if parsed.version is None:
                raise NotFound(f"model {parsed.full_name} has no versions", param="model")
            numbers = session.scalars(select(Version.number).where(
                Version.model_id == model_id).order_by(Version.number)).all()
        listed = ", ".join(str(n) for n in numbers)
        raise NotFound(
            f"model {parsed.full_name} has no version {parsed.version} (versions: {listed})",
            param="model",
        )

    def get_version(self, version_id: int, *, principal: Principal = SYSTEM) -> VersionInfo:
        with self.db.session() as session:
            query = _version_options(
                select(Version).join(Version.model)
                .where(Version.id == version_id, readable_by(principal))
            )
            version = session.scalars(query).first()
            if version is None:
                raise NotFound(f"version id {version_id} does not exist")
            return _version_info(version)

    def derived_versions(self, base: VersionInfo, *, limit: int = 50) -> list[VersionInfo]:
        """The versions published on top of `base` (fine-tunes, adapters), newest first,
        without their file lists: what this store has measured on that base (the
        training-time estimate reads their runs' throughput). Every owner's: only
        aggregate figures may leave this store-internal query."""
        with self.db.session() as session:
            query = (
                select(Version).join(Version.model)
                .where(Version.base_version_id == base.id)
                .order_by(Version.created_at.desc(), Version.id.desc()).limit(limit)
                .options(selectinload(Version.model).selectinload(Model.namespace),
                         selectinload(Version.base_version).selectinload(Version.model)
                         .selectinload(Model.namespace))
            )
            return [_version_info(v, with_files=False) for v in session.scalars(query)]

    def read_file(self, version: VersionInfo, path: str) -> bytes:
        return self.blobs.read_bytes(version.file(path).digest)

    def card(self, version: VersionInfo | str | ModelRef, *,
             principal: Principal = SYSTEM) -> str:
        """The model card (markdown with YAML front matter) of a version, or of the
        version a name resolves to."""
        if not isinstance(version, VersionInfo):
            version = self.resolve(version, principal=principal)
        else:
            with self.db.session() as session:
                visible = session.scalar(
                    select(Version.id).join(Version.model)
                    .where(Version.id == version.id, readable_by(principal))
                )
            if visible is None:
                raise _not_in_store(parse_ref(version.model))
        from gptstore.catalog.evaluations import Evaluations

        # evaluations measured after publishing join the (immutable) card's model-index
        return Evaluations(self).card_of(version, self.read_file(version, CARD_FILE).decode())

    def snapshot(self, version: VersionInfo) -> Path:
        """A folder holding the version's files (symlinks into the blob store).

        Built once per manifest in a temp folder and renamed into place, so loaders
        (transformers' from_pretrained, safetensors' mmap) see a complete folder.
        """
        target = self.settings.snapshots_dir / version.manifest_digest.split(":", 1)[1]
        if target.is_dir():
            return target
        self.settings.snapshots_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.settings.snapshots_dir, prefix=".tmp-"))
        try:
            for entry in version.files:
                blob = self.blobs.path(entry.digest)
                if not blob.is_file():
                    raise StorageError(
                        f"{version.ref}: blob {entry.digest} of {entry.path} is missing; "
                        "the store is damaged, re-import the model"
                    )
                link = tmp / entry.path
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(blob, link)
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # lost a race with another process: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def export(self, ref: str, out_dir: Path, *, principal: Principal = SYSTEM) -> VersionInfo:
        """Copy a version's files (real files, not links) into `out_dir`."""
        version = self.resolve(ref, principal=principal)
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise Conflict(
                f"export folder {out_dir} is not empty: choose a new or empty folder",
                param="dir",
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        for entry in version.files:
            dest = out_dir / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.blobs.path(entry.digest), dest)
        self.count_download(version.model)
        return version

    def count_download(self, name: str) -> None:
        """One download of `name`, written now (the CLI's exports; the server batches its
        counts through `catalog.usage.UsageCounter`)."""
        from gptstore.catalog.usage import record_usage

        record_usage(self.db, {name: (0, 1)})

    # -- writing --------------------------------------------------------------------

    def publish(
        self,
        name: str,
        source_dir: Path,
        *,
        task: str = "causal-lm",
        kind: str = "full",
        base: str | None = None,
        description: str = "",
        tags: Iterable[str] = (),
        license: str | None = None,
        lineage: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        new_model: bool = True,
        visibility: str = PUBLIC,
        owner_id: int | None = None,
    ) -> VersionInfo:
        """Publish the files of `source_dir` as a new version of `name`.

        `new_model=True` creates the model and fails with Conflict when the name is
        taken; `new_model=False` adds a version to an existing model. `base` names the
        base version of a fine-tune or adapter. A README.md in `source_dir` is replaced
        by the generated model card. `visibility` applies to a new model; `owner_id` (an
        account) must own the namespace, or claims it when nobody does.
        """
        ref = parse_ref(name, allow_version=False)
        check_visibility(visibility)
        if task not in TASKS:
            raise InvalidRequest(f"unknown task {task!r}: use one of {', '.join(TASKS)}",
                                 param="task")
        if kind not in ("full", "adapter"):
            raise InvalidRequest(f"unknown kind {kind!r}: use 'full' or 'adapter'", param="kind")
        base_version = self.resolve(base) if base else None
        if kind == "adapter" and base_version is None:
            raise InvalidRequest("an adapter version needs a base version", param="base")
        existing = self._existing_versions(ref)
        if new_model and existing is not None:
            raise Conflict(
                f"model {ref.full_name} already exists: choose another name, or remove it "
                f"first with `gptstore models rm {ref.full_name}`",
                param="name",
            )
        if not new_model and existing is None:
            raise NotFound(f"model {ref.full_name} does not exist", param="name")
        lineage = dict(lineage or {})
        metrics = dict(metrics or {})
        number = (existing or 0) + 1

        # 1-2: blobs first (invisible until the transaction below commits)
        entries = [FileEntry(rel, *_put(self.blobs, path)) for rel, path in _files_of(source_dir)]
        if not entries:
            raise InvalidRequest(f"folder {source_dir} holds no files to publish")
        card = render_card(
            CardData(
                name=ref.full_name, version=number, task=task, description=description,
                license=license, tags=list(tags), kind=kind,
                base_model=base_version.ref if base_version else None,
                lineage=lineage, metrics=metrics,
                label_names=lineage.get("label_names"), api_base=self.settings.api_base,
            )
        )
        card_blob = self.blobs.put_bytes(card.encode())
        entries.append(FileEntry(CARD_FILE, card_blob.digest, card_blob.size))
        manifest = Manifest(files=tuple(entries), annotations={"model": ref.full_name})
        manifest_blob = self.blobs.put_bytes(manifest.to_json())

        # 3: one transaction makes the version visible
        try:
            with self.db.session(write=True) as session:
                namespace = _namespace_in(session, ref.namespace, owner_id)
                if owner_id is not None and namespace.owner_id != owner_id:
                    if namespace.owner_id is not None:
                        raise PermissionDenied(
                            f"namespace {ref.namespace} belongs to another account; publish "
                            "under your own namespace", param="name")
                    namespace.owner_id = owner_id
                model = session.scalars(
                    select(Model).where(Model.namespace_id == namespace.id,
                                        Model.name == ref.name)
                ).first()
                if model is None:
                    if not new_model:
                        raise NotFound(f"model {ref.full_name} was removed meanwhile")
                    model = Model(namespace_id=namespace.id, name=ref.name, task=task,
                                  description=description, tags=list(tags), license=license,
                                  visibility=visibility)
                    session.add(model)
                    session.flush()
                elif new_model:
                    raise Conflict(
                        f"model {ref.full_name} was created by another command meanwhile: "
                        "choose another name, or remove it first",
                        param="name",
                    )
                model.updated_at = utcnow()
                version = Version(
                    model_id=model.id, number=number, manifest_digest=manifest_blob.digest,
                    kind=kind, base_version_id=base_version.id if base_version else None,
                    lineage=lineage, metrics=metrics, size=manifest.total_size,
                )
                session.add(version)
                session.flush()
                session.add_all(
                    VersionFile(version_id=version.id, path=e.path, digest=e.digest, size=e.size)
                    for e in entries
                )
                text_search.index_model(
                    session, model, ref.namespace, card=parse_card(card)[1],
                    base_model=base_version.model if base_version else None)
                version_id = version.id
        except IntegrityError as exc:
            raise Conflict(
                f"another command published {ref.full_name} at the same time: run this one "
                "again (with another name if it was a new model)",
                param="name",
            ) from exc
        return self.get_version(version_id)

    def _existing_versions(self, ref: ModelRef) -> int | None:
        """The highest version number of the model, or None when it does not exist."""
        with self.db.session() as session:
            model = session.scalars(
                select(Model).join(Namespace).where(
                    Namespace.name == ref.namespace, Model.name == ref.name
                )
            ).first()
            if model is None:
                return None
            top = session.scalar(select(func.max(Version.number)).where(
                Version.model_id == model.id))
            return int(top or 0)

    def namespace_owner(self, namespace: str) -> int | None:
        """The account id owning `namespace` (None: nobody, or no such namespace)."""
        with self.db.session() as session:
            return session.scalar(select(Namespace.owner_id).where(Namespace.name == namespace))

    def claim_namespace(self, namespace: str, owner_id: int) -> None:
        """Make account `owner_id` the owner of `namespace` (created if missing); a
        namespace another account owns is refused."""
        with self.db.session(write=True) as session:
            row = session.scalars(select(Namespace).where(Namespace.name == namespace)).first()
            if row is None:
                session.add(Namespace(name=namespace, owner_id=owner_id))
            elif row.owner_id is None:
                row.owner_id = owner_id
            elif row.owner_id != owner_id:
                raise PermissionDenied(f"namespace {namespace} belongs to another account; "
                                       "choose a name in the owner's namespace",
                                       param="owner")

    def set_visibility(self, name: str, visibility: str, *,
                       principal: Principal = SYSTEM) -> ModelInfo:
        """Change who may read a model; needs the `admin` right on its namespace (its
        owner, an organisation admin, or SYSTEM)."""
        ref = parse_ref(name, allow_version=False)
        check_visibility(visibility)
        with self.db.session(write=True) as session:
            model = _find_model(session, ref, principal)
            if model is None:
                raise _not_in_store(ref)
            if not principal.may_write_namespace(model.namespace.owner_id, need="admin"):
                raise PermissionDenied(f"changing the visibility of {ref.full_name} needs "
                                       "the admin role on its namespace", param="visibility")
            model.visibility = visibility
        return self.get_model(ref)

    def delete_model(self, name: str) -> ModelInfo:
        """Remove a model and its versions; its blobs go at the next `gc`."""
        ref = parse_ref(name, allow_version=False)
        info = self.get_model(ref)
        with self.db.session(write=True) as session:
            model = _find_model(session, ref)
            if model is None:
                raise NotFound(f"model {ref.full_name} is not in the store", param="model")
            ids = [v.id for v in model.versions]
            dependants = session.scalars(
                select(Version).where(Version.base_version_id.in_(ids),
                                      Version.model_id != model.id)
                .options(selectinload(Version.model).selectinload(Model.namespace))
            ).all()
            if dependants:
                names = sorted({f"{d.model.namespace.name}/{d.model.name}" for d in dependants})
                raise Conflict(
                    f"model {ref.full_name} is the base of {', '.join(names)}: remove those "
                    "first",
                    param="model",
                )
            # versions of one model may be bases of its own later versions: clear those
            # links first so the RESTRICT foreign key does not block the delete
            for v in model.versions:
                v.base_version_id = None
            session.flush()
            session.delete(model)
        return info

    def referenced_digests(self) -> set[str]:
        with self.db.session() as session:
            files = set(session.scalars(select(VersionFile.digest)).all())
            manifests = set(session.scalars(select(Version.manifest_digest)).all())
        from gptstore.catalog.evaluations import Evaluations

        suites = {suite.data_digest for suite in Evaluations(self).list_suites()}
        return files | manifests | self.files.referenced_digests() | suites

    def gc(self, *, grace_seconds: float | None = None) -> GcResult:
        """Remove unreferenced blobs (older than the grace period) and stale snapshots."""
        grace = self.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        referenced = self.referenced_digests()
        result = self.blobs.gc(referenced, grace_seconds=grace)
        snaps = self.settings.snapshots_dir
        if snaps.is_dir():
            live = {d.split(":", 1)[1] for d in referenced}
            for folder in snaps.iterdir():
                if folder.name not in live:
                    shutil.rmtree(folder, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        folder.unlink()
        return result


def _put(blobs: BlobStore, path: Path) -> tuple[str, int]:
    info = blobs.put_file(path)
    return info.digest, info.size


def _namespace_in(session: Session, name: str, owner_id: int | None) -> Namespace:
    """The namespace `name`, created when missing.

    Two workers publishing their first models into one new namespace at the same time
    both find it missing on PostgreSQL (SQLite serialises writers): the loser's insert
    runs in a savepoint, so its unique-name violation rolls back only that insert and
    the row the winner committed is read instead of failing the whole publish.
    """
    query = select(Namespace).where(Namespace.name == name)
    if (namespace := session.scalars(query).first()) is not None:
        return namespace
    try:
        with session.begin_nested():
            namespace = Namespace(name=name, owner_id=owner_id)
            session.add(namespace)
        return namespace
    except IntegrityError:
        return session.scalars(query).one()
