"""The catalog repository: models, versions and their files, over the database and the
blob store.

Publishing is ordered so that nothing half-written is ever visible:

1. every file is written to the blob store (temp file, hash, fsync, rename);
2. the model card and the manifest are written as blobs too;
3. one database transaction inserts the model (if new), the version and its file rows.

A process killed before step 3 commits leaves only unreferenced blobs, which no query
sees and `gc` removes; a killed transaction is rolled back by the database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from gptstore.catalog.cards import CardData, render_card
from gptstore.catalog.files import FileRepository
from gptstore.catalog.names import ModelRef, parse_ref
from gptstore.catalog.tables import Model, Namespace, Version, VersionFile, utcnow
from gptstore.errors import Conflict, InvalidRequest, NotFound, StorageError
from gptstore.settings import Settings
from gptstore.storage.blobs import BlobStore
from gptstore.storage.db import Database
from gptstore.storage.manifest import FileEntry, Manifest
from gptstore.tasks import TASKS

CARD_FILE = "README.md"


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref, "model": self.model, "version": self.number, "kind": self.kind,
            "task": self.task, "manifest_digest": self.manifest_digest, "base": self.base,
            "lineage": self.lineage, "metrics": self.metrics, "size": self.size,
            "created_at": self.created_at.isoformat(),
            "files": [{"path": f.path, "digest": f.digest, "size": f.size} for f in self.files],
        }


@dataclass(frozen=True)
class ModelInfo:
    name: str
    namespace: str
    task: str
    description: str
    tags: list[str]
    license: str | None
    visibility: str
    created_at: datetime
    updated_at: datetime
    downloads: int
    likes: int
    versions: list[VersionInfo] = field(default_factory=list)

    @property
    def latest(self) -> VersionInfo:
        return self.versions[-1]

    def to_dict(self, *, versions: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name, "namespace": self.namespace, "task": self.task,
            "description": self.description, "tags": self.tags, "license": self.license,
            "visibility": self.visibility, "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(), "downloads": self.downloads,
            "likes": self.likes,
            "latest_version": self.versions[-1].number if self.versions else None,
        }
        if versions:
            doc["versions"] = [v.to_dict() for v in self.versions]
        return doc


def _version_info(v: Version, *, with_files: bool = True) -> VersionInfo:
    base = None
    if v.base_version is not None:
        bv = v.base_version
        base = f"{bv.model.namespace.name}/{bv.model.name}@{bv.number}"
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
        created_at=v.created_at,
        files=files,
    )


def _model_info(m: Model) -> ModelInfo:
    return ModelInfo(
        name=f"{m.namespace.name}/{m.name}",
        namespace=m.namespace.name,
        task=m.task,
        description=m.description,
        tags=list(m.tags or []),
        license=m.license,
        visibility=m.visibility,
        created_at=m.created_at,
        updated_at=m.updated_at,
        downloads=m.downloads,
        likes=m.likes,
        versions=[_version_info(v) for v in m.versions],
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


def _find_model(session: Session, ref: ModelRef) -> Model | None:
    query = _model_query().join(Namespace).where(
        Namespace.name == ref.namespace, Model.name == ref.name
    )
    return session.scalars(query).first()


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

    def list_models(self, *, task: str | None = None, search: str | None = None,
                    sort: str = "name") -> list[ModelInfo]:
        with self.db.session() as session:
            query = _model_query().join(Namespace)
            if task:
                query = query.where(Model.task == task)
            if search:
                like = f"%{search.lower()}%"
                query = query.where(
                    or_(
                        func.lower(Namespace.name + "/" + Model.name).like(like),
                        func.lower(Model.description).like(like),
                    )
                )
            order = {
                "name": (Namespace.name, Model.name),
                "updated": (Model.updated_at.desc(),),
                "downloads": (Model.downloads.desc(), Namespace.name, Model.name),
                "likes": (Model.likes.desc(), Namespace.name, Model.name),
            }.get(sort)
            if order is None:
                raise InvalidRequest(
                    f"unknown sort {sort!r}: use name, updated, downloads or likes",
                    param="sort",
                )
            return [_model_info(m) for m in session.scalars(query.order_by(*order)).unique()]

    def get_model(self, name: str | ModelRef) -> ModelInfo:
        ref = parse_ref(name) if isinstance(name, str) else name
        with self.db.session() as session:
            model = _find_model(session, ref)
            if model is None:
                raise NotFound(
                    f"model {ref.full_name} is not in the store; see `gptstore models list` "
                    "or pull / import it first",
                    param="model",
                )
            return _model_info(model)

    def exists(self, name: str) -> bool:
        try:
            self.get_model(name)
        except NotFound:
            return False
        return True

    def resolve(self, ref: str | ModelRef) -> VersionInfo:
        """The version `ref` names: `namespace/name` (latest) or `namespace/name@N`."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        model = self.get_model(parsed)
        if not model.versions:
            raise NotFound(f"model {model.name} has no versions", param="model")
        if parsed.version is None:
            return model.latest
        for version in model.versions:
            if version.number == parsed.version:
                return version
        numbers = ", ".join(str(v.number) for v in model.versions)
        raise NotFound(
            f"model {model.name} has no version {parsed.version} (versions: {numbers})",
            param="model",
        )

    def get_version(self, version_id: int) -> VersionInfo:
        with self.db.session() as session:
            query = select(Version).where(Version.id == version_id).options(
                selectinload(Version.files),
                selectinload(Version.model).selectinload(Model.namespace),
                selectinload(Version.base_version).selectinload(Version.model)
                .selectinload(Model.namespace),
            )
            version = session.scalars(query).first()
            if version is None:
                raise NotFound(f"version id {version_id} does not exist")
            return _version_info(version)

    def read_file(self, version: VersionInfo, path: str) -> bytes:
        return self.blobs.read_bytes(version.file(path).digest)

    def card(self, version: VersionInfo) -> str:
        return self.read_file(version, CARD_FILE).decode()

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

    def export(self, ref: str, out_dir: Path) -> VersionInfo:
        """Copy a version's files (real files, not links) into `out_dir`."""
        version = self.resolve(ref)
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
        ref = parse_ref(name)
        with self.db.session(write=True) as session:
            model = _find_model(session, ref)
            if model is not None:
                model.downloads += 1

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
    ) -> VersionInfo:
        """Publish the files of `source_dir` as a new version of `name`.

        `new_model=True` creates the model and fails with Conflict when the name is
        taken; `new_model=False` adds a version to an existing model. `base` names the
        base version of a fine-tune or adapter. A README.md in `source_dir` is replaced
        by the generated model card.
        """
        ref = parse_ref(name, allow_version=False)
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
                label_names=lineage.get("label_names"),
            )
        )
        card_blob = self.blobs.put_bytes(card.encode())
        entries.append(FileEntry(CARD_FILE, card_blob.digest, card_blob.size))
        manifest = Manifest(files=tuple(entries), annotations={"model": ref.full_name})
        manifest_blob = self.blobs.put_bytes(manifest.to_json())

        # 3: one transaction makes the version visible
        try:
            with self.db.session(write=True) as session:
                namespace = session.scalars(
                    select(Namespace).where(Namespace.name == ref.namespace)
                ).first()
                if namespace is None:
                    namespace = Namespace(name=ref.namespace)
                    session.add(namespace)
                    session.flush()
                model = session.scalars(
                    select(Model).where(Model.namespace_id == namespace.id,
                                        Model.name == ref.name)
                ).first()
                if model is None:
                    if not new_model:
                        raise NotFound(f"model {ref.full_name} was removed meanwhile")
                    model = Model(namespace_id=namespace.id, name=ref.name, task=task,
                                  description=description, tags=list(tags), license=license)
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
        return files | manifests | self.files.referenced_digests()

    def gc(self, *, grace_seconds: float | None = None) -> tuple[int, int]:
        """Remove unreferenced blobs (older than the grace period) and stale snapshots."""
        grace = self.settings.gc_grace_seconds if grace_seconds is None else grace_seconds
        referenced = self.referenced_digests()
        removed, freed = self.blobs.gc(referenced, grace_seconds=grace)
        snaps = self.settings.snapshots_dir
        if snaps.is_dir():
            live = {d.split(":", 1)[1] for d in referenced}
            for folder in snaps.iterdir():
                if folder.name not in live:
                    shutil.rmtree(folder, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        folder.unlink()
        return removed, freed


def _put(blobs: BlobStore, path: Path) -> tuple[str, int]:
    info = blobs.put_file(path)
    return info.digest, info.size
