from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
from pathlib import Path

import pytest

from gptstore.errors import InvalidRequest, NotFound, StorageError
from gptstore.storage.blobs import BlobStore, check_digest


def test_put_addresses_by_sha256_and_dedupes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    a = store.put_bytes(b"hello")
    b = store.put_bytes(b"hello")
    assert a == b
    assert a.digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert a.size == 5
    assert store.read_bytes(a.digest) == b"hello"
    assert len(list(store.iter_blobs())) == 1
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []  # no temp file left behind
    assert store.verify(a.digest)


def test_blobs_are_read_only_and_verify_detects_damage(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    info = store.put_bytes(b"payload")
    path = store.path(info.digest)
    assert not os.access(path, os.W_OK) or os.geteuid() == 0
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    assert not store.verify(info.digest)


def test_missing_blob_and_bad_digest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(NotFound):
        store.read_bytes("sha256:" + "0" * 64)
    with pytest.raises(InvalidRequest, match="malformed blob digest"):
        check_digest("md5:abc")


def test_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes go to /dev/full, which fails every write with ENOSPC like a full disk."""
    store = BlobStore(tmp_path)
    real_mkstemp = tempfile.mkstemp

    def full_mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)  # type: ignore[arg-type]
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", full_mkstemp)
    with pytest.raises(StorageError, match="disk full") as info:
        store.put_bytes(b"x" * 10_000_000)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert list(store.iter_blobs()) == []
    assert list(store.tmp.iterdir()) == []


def test_gc_keeps_referenced_and_young_blobs(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    keep = store.put_bytes(b"keep")
    drop = store.put_bytes(b"drop")
    young = store.put_bytes(b"young")
    old = time.time() - 7200
    for info in (keep, drop):
        os.utime(store.path(info.digest), (old, old))
    stray = store.tmp / "blob-stray"
    stray.write_bytes(b"half written")
    os.utime(stray, (old, old))
    result = store.gc({keep.digest}, grace_seconds=3600)
    assert (result.removed, result.freed) == (2, len(b"drop") + len(b"half written"))
    assert (result.kept, result.kept_bytes) == (1, len(b"young"))
    assert store.exists(keep.digest)
    assert store.exists(young.digest)
    assert not store.exists(drop.digest)
    assert not stray.exists()
