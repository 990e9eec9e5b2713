"""Uploaded files (training data, job results): bytes in the blob store, a row each.

- `upload(chunks, filename=, purpose=, owner=)` streams the bytes into the blob store
  (never whole in memory; refused past `max_bytes` while they arrive), checks a
  fine-tune file with the validation report of `gptstore data validate`, and commits
  one row: the file is visible only once all of that succeeded.
- `path(file)` gives the file under its own name (`GPTSTORE_HOME/files/<id>/<name>`,
  a link to its blob), so the data formats detect it by extension like any local file;
  a training run reads its data through it, by file id, never by a user's path.
- `get`, `page`, `delete`; `referenced_digests` for the blob garbage collector.

Knows nothing of jobs or HTTP; ownership is a plain owner name checked by callers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from gptstore.catalog.tables import StoredFile
from gptstore.errors import InvalidRequest, NotFound
from gptstore.settings import Settings
from gptstore.storage.blobs import BlobStore
from gptstore.storage.db import Database

#: purposes a caller may upload with (OpenAI names); "fine-tune-results" files are
#: written by jobs
UPLOAD_PURPOSES = ("fine-tune",)
RESULTS_PURPOSE = "fine-tune-results"
MAX_FILENAME = 255


@dataclass(frozen=True)
class FileInfo:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    digest: str
    status: str
    created_at: datetime
    report: dict[str, Any] | None = None


def _info(row: StoredFile) -> FileInfo:
    return FileInfo(id=row.id, owner=row.owner, filename=row.filename, purpose=row.purpose,
                    bytes=row.bytes, digest=row.digest, status=row.status,
                    created_at=row.created_at, report=row.report)


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def check_upload_purpose(purpose: str | None) -> str:
    if not purpose:
        raise InvalidRequest("purpose is required: use purpose=fine-tune", param="purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"purpose {purpose!r} is not supported: gptstore stores "
                             f"files for {', '.join(UPLOAD_PURPOSES)}", param="purpose")
    return purpose


def check_filename(name: str) -> str:
    """A plain file name: no folders, no control characters, not too long."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("the upload has no file name; send the file with a name such "
                             "as train.jsonl", param="file")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise InvalidRequest("the file name contains control characters; rename the file",
                             param="file")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise InvalidRequest(f"file name {name!r} is not a plain name (no folders, not "
                             "hidden); rename the file, e.g. train.jsonl", param="file")
    if len(name.encode()) > MAX_FILENAME:
        raise InvalidRequest(f"the file name is longer than {MAX_FILENAME} bytes; shorten "
                             "it", param="file")
    return name


class FileRepository:
    """Files in the database, their bytes in the blob store."""

    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs

    # -- writing --------------------------------------------------------------------

    def upload(self, chunks: Iterable[bytes], *, filename: str, purpose: str, owner: str,
               max_bytes: int | None = None) -> FileInfo:
        """Store an uploaded file (see the module docstring)."""
        from gptstore.catalog.screen import UploadScreen

        filename = check_filename(filename)
        check_upload_purpose(purpose)
        screen = UploadScreen(filename)
        with self.blobs.writer(max_bytes=max_bytes) as writer:
            for chunk in chunks:
                screen.feed(chunk)
                writer.write(chunk)
            screen.finish()
            blob = writer.commit()
        return self.add(blob.digest, blob.size, filename=filename, purpose=purpose,
                        owner=owner)

    def add(self, digest: str, size: int, *, filename: str, purpose: str, owner: str
            ) -> FileInfo:
        """Register a stored blob as a file (checked first when it is training data)."""
        file_id = new_file_id()
        report: dict[str, Any] | None = None
        status = "processed"
        if purpose == "fine-tune":
            report = self._report(file_id, digest, filename)
            status = "processed" if report["ok"] else "error"
        with self.db.session(write=True) as session:
            row = StoredFile(id=file_id, owner=owner, filename=filename, purpose=purpose,
                             bytes=size, digest=digest, status=status, report=report)
            session.add(row)
            session.flush()
            return _info(row)

    def _report(self, file_id: str, digest: str, filename: str) -> dict[str, Any]:
        from gptstore.data import validate_file

        folder = self._link(file_id, digest, filename)
        try:
            report = validate_file(folder / filename).to_dict()
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # rebuilt on use, once committed
        report["path"] = filename  # the link's path means nothing to the caller
        return report

    def delete(self, file_id: str) -> FileInfo:
        """Remove the file's row (its blob goes at the next `gc`) and its link."""
        with self.db.session(write=True) as session:
            row = session.get(StoredFile, file_id)
            if row is None:
                raise NotFound(f"file {file_id} does not exist", param="file_id")
            info = _info(row)
            session.delete(row)
        shutil.rmtree(self.settings.files_dir / file_id, ignore_errors=True)
        return info

    # -- reading --------------------------------------------------------------------

    def get(self, file_id: str) -> FileInfo:
        with self.db.session() as session:
            row = session.get(StoredFile, file_id) if isinstance(file_id, str) else None
            if row is None:
                raise NotFound(f"file {file_id} does not exist; upload it first, or list "
                               "files with GET /v1/files", param="file_id")
            return _info(row)

    def page(self, *, owner: str | None = None, purpose: str | None = None,
             after: str | None = None, limit: int = 10_000, order: str = "desc"
             ) -> tuple[list[FileInfo], bool]:
        """Files newest first (or oldest with order="asc"), after the file id `after`;
        returns (files, has_more)."""
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"order must be asc or desc, got {order!r}", param="order")
        with self.db.session() as session:
            query = select(StoredFile)
            if owner is not None:
                query = query.where(StoredFile.owner == owner)
            if purpose is not None:
                query = query.where(StoredFile.purpose == purpose)
            if after is not None:
                anchor = session.get(StoredFile, after)
                if anchor is None:
                    raise NotFound(f"file {after} (the `after` cursor) does not exist",
                                   param="after")
                if order == "desc":
                    query = query.where(or_(StoredFile.created_at < anchor.created_at, and_(
                        StoredFile.created_at == anchor.created_at, StoredFile.id < anchor.id)))
                else:
                    query = query.where(or_(StoredFile.created_at > anchor.created_at, and_(
                        StoredFile.created_at == anchor.created_at, StoredFile.id > anchor.id)))
            keys = (StoredFile.created_at, StoredFile.id)
            query = query.order_by(*(k.desc() for k in keys) if order == "desc" else keys)
            rows = session.scalars(query.limit(limit + 1)).all()
            return [_info(r) for r in rows[:limit]], len(rows) > limit

    def path(self, file: FileInfo) -> Path:
        """The file's bytes under its own name (a link into the blob store)."""
        return self._link(file.id, file.digest, file.filename) / file.filename

    def _link(self, file_id: str, digest: str, filename: str) -> Path:
        folder = self.settings.files_dir / file_id
        if (folder / filename).exists():
            return folder
        blob = self.blobs.path(digest)
        if not blob.is_file():
            raise NotFound(f"the bytes of file {file_id} are missing from the store",
                           param="file_id")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{filename}.{secrets.token_hex(4)}"
        os.symlink(blob, tmp)
        os.replace(tmp, folder / filename)  # atomic: a reader never sees half a link
        return folder

    def referenced_digests(self) -> set[str]:
        with self.db.session() as session:
            return set(session.scalars(select(StoredFile.digest)).all())
