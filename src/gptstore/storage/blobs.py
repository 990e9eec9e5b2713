"""Content-addressed blob storage (sha256), in the style of Ollama and huggingface_hub.

Layout under the root folder::

    sha256/ab/abcdef...   one file per distinct content, named by its sha256
    tmp/                  files being written; never referenced by anything

A blob is written to `tmp/`, hashed while it is written, fsynced, then renamed to its
address (rename is atomic on POSIX), and the directory is fsynced. So a blob either
exists whole at its address or not at all: a process killed mid-write leaves at most
a stray temp file, which `gc` removes. Identical content is stored once.

This module knows nothing about models or the database; `catalog` decides which blobs
are referenced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from gptstore.errors import InvalidRequest, NotFound, PayloadTooLarge, StorageError

_CHUNK = 4 * 1024 * 1024
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class BlobInfo:
    digest: str  # "sha256:<hex>"
    size: int


def check_digest(digest: str) -> str:
    if not _DIGEST_RE.match(digest):
        raise InvalidRequest(
            f"malformed blob digest {digest!r}: expected 'sha256:' + 64 hex digits"
        )
    return digest


def stream_sha256(stream: BinaryIO) -> str:
    """`sha256:<hex>` of everything `stream` yields (read in chunks)."""
    hasher = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def file_sha256(path: Path | str) -> str:
    """`sha256:<hex>` of a file's bytes: the digest a blob of it gets, and the one
    lineage records for a data set or an imported file."""
    with open(path, "rb") as handle:
        return stream_sha256(handle)


class BlobWriter:
    """Writes one blob into `tmp/`, hashing as it goes; `commit` renames it to its
    address (see the module docstring)."""

    def __init__(self, store: BlobStore, *, max_bytes: int | None) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.size = 0
        self._hasher = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix="blob-")
        self._path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._discard()

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "write after commit"
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            self._discard()
            raise PayloadTooLarge(f"the upload is larger than the limit of {self.max_bytes} bytes; "
                           "split the data or raise the server's limit", param="file")
        self._hasher.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._discard()
            raise _storage_error(exc, "writing a blob") from exc

    def commit(self) -> BlobInfo:
        assert self._file is not None, "commit twice"
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            digest = "sha256:" + self._hasher.hexdigest()
            final = self.store.path(digest)
            if final.exists():
                self._path.unlink()  # identical content is stored once
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(self._path, 0o444)
                os.replace(self._path, final)
                _fsync_dir(final.parent)
            return BlobInfo(digest, self.size)
        except OSError as exc:
            self._discard()
            raise _storage_error(exc, "writing a blob") from exc

    def _discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(
            f"disk full while {what}: free some space (or point GPTSTORE_HOME at a larger "
            "disk) and run the command again; nothing was stored"
        )
    return StorageError(f"{what} failed: {exc.strerror or exc}; nothing was stored")


class GcResult(NamedTuple):
    """What a garbage collection did: unreferenced files removed and their bytes, and
    unreferenced files kept because they are younger than the grace period."""

    removed: int
    freed: int
    kept: int = 0
    kept_bytes: int = 0
    grace_seconds: float = 0.0


class BlobStore:
    """sha256-addressed files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    def _ensure_dirs(self) -> None:
        try:
            (self.root / "sha256").mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error(exc, f"creating the blob folder {self.root}") from exc

    def path(self, digest: str) -> Path:
        hexdigest = check_digest(digest).split(":", 1)[1]
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from {self.root}") from exc

    def writer(self, *, max_bytes: int | None = None) -> BlobWriter:
        """A blob written piece by piece (an upload streamed off the network): use it
        as a context manager, `write` chunks, then `commit()` for its `BlobInfo`; left
        without a commit (an error, a client gone) it leaves nothing behind."""
        self._ensure_dirs()
        return BlobWriter(self, max_bytes=max_bytes)

    def put_stream(self, stream: BinaryIO) -> BlobInfo:
        """Store the bytes read from `stream`; returns their digest and size."""
        with self.writer() as out:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
            return out.commit()

    def put_file(self, path: Path) -> BlobInfo:
        try:
            with Path(path).open("rb") as f:
                return self.put_stream(f)
        except FileNotFoundError as exc:
            raise NotFound(f"file {path} does not exist") from exc
        except PermissionError as exc:
            raise InvalidRequest(f"file {path} is not readable: check its permissions") from exc

    def put_bytes(self, data: bytes) -> BlobInfo:
        import io

        return self.put_stream(io.BytesIO(data))

    def read_bytes(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def verify(self, digest: str) -> bool:
        """Re-hash a stored blob; False when its bytes no longer match its name."""
        with self.open(digest) as f:
            return stream_sha256(f) == digest

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in sorted(base.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    yield "sha256:" + f.name, f

    def gc(self, referenced: set[str], *, grace_seconds: float) -> GcResult:
        """Delete blobs not in `referenced` and stray temp files older than the grace.

        The grace period keeps blobs an import has just written but not yet committed
        (like git's prune expiry); those are counted as kept.
        """
        now = time.time()
        removed = freed = kept = kept_bytes = 0
        candidates = list(self.iter_blobs())
        if self.tmp.is_dir():
            candidates += [("", p) for p in self.tmp.iterdir()]
        for digest, path in candidates:
            if digest in referenced:
                continue
            try:
                stat = path.stat()
                if now - stat.st_mtime < grace_seconds:
                    kept += 1
                    kept_bytes += stat.st_size
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
            freed += stat.st_size
        return GcResult(removed, freed, kept, kept_bytes, grace_seconds)
