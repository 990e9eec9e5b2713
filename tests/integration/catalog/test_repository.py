"""Catalog repository on SQLite and PostgreSQL: publish, resolve, dedupe, delete, gc,
and the atomicity of publishing (a killed publish leaves nothing visible)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gptstore.catalog.cards import parse_card
from gptstore.catalog.repository import Catalog
from gptstore.errors import Conflict, InvalidRequest, NotFound
from gptstore.settings import Settings


def _folder(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    return folder


def test_publish_resolve_and_card(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}", "model.safetensors": b"weights"})
    v1 = catalog.publish("acme/m", src, description="A test model.", license="mit",
                         tags=["demo"], lineage={"seed": 1}, metrics={"accuracy": 0.5})
    assert v1.ref == "acme/m@1"
    assert {f.path for f in v1.files} == {"config.json", "model.safetensors", "README.md"}
    meta, body = parse_card(catalog.card(v1))
    assert meta["license"] == "mit"
    assert meta["pipeline_tag"] == "text-generation"
    assert "demo" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0] == {
        "type": "accuracy", "value": 0.5, "name": "accuracy"}
    assert "A test model." in body
    v2 = catalog.publish("acme/m", src, new_model=False, base="acme/m@1")
    assert v2.number == 2 and v2.base == "acme/m@1"
    assert catalog.resolve("acme/m").number == 2
    assert catalog.resolve("acme/m@1").id == v1.id
    with pytest.raises(NotFound, match="no version 3"):
        catalog.resolve("acme/m@3")
    snapshot = catalog.snapshot(v1)
    assert (snapshot / "model.safetensors").read_bytes() == b"weights"


def test_identical_files_are_stored_once(catalog: Catalog, tmp_path: Path) -> None:
    a = _folder(tmp_path, "a", {"model.safetensors": b"same bytes", "config.json": b"{1}"})
    b = _folder(tmp_path, "b", {"model.safetensors": b"same bytes", "config.json": b"{2}"})
    catalog.publish("acme/a", a)
    catalog.publish("acme/b", b)
    weights = [p for _, p in catalog.blobs.iter_blobs() if p.read_bytes() == b"same bytes"]
    assert len(weights) == 1


def test_name_taken_and_missing(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}"})
    catalog.publish("acme/m", src)
    with pytest.raises(Conflict, match="already exists"):
        catalog.publish("acme/m", src)
    with pytest.raises(NotFound, match="not in the store"):
        catalog.get_model("acme/other")
    with pytest.raises(InvalidRequest, match="unknown task"):
        catalog.publish("acme/x", src, task="dance")
    with pytest.raises(InvalidRequest, match="needs a base"):
        catalog.publish("acme/x", src, kind="adapter")


def test_list_search_sort(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}"})
    catalog.publish("acme/zeta", src, description="sentiment classifier", task="classification")
    catalog.publish("acme/alpha", src)
    assert [m.name for m in catalog.list_models()] == ["acme/alpha", "acme/zeta"]
    assert [m.name for m in catalog.list_models(task="classification")] == ["acme/zeta"]
    assert [m.name for m in catalog.list_models(search="SENTIMENT")] == ["acme/zeta"]
    catalog.count_download("acme/zeta")
    assert catalog.list_models(sort="downloads")[0].name == "acme/zeta"
    with pytest.raises(InvalidRequest, match="unknown sort"):
        catalog.list_models(sort="random")


def test_delete_and_gc(catalog: Catalog, tmp_path: Path) -> None:
    base = catalog.publish("acme/base", _folder(tmp_path, "b", {"w.safetensors": b"base"}))
    catalog.publish("acme/ft", _folder(tmp_path, "f", {"a.safetensors": b"adapter"}),
                    kind="adapter", base=base.ref)
    with pytest.raises(Conflict, match="base of acme/ft"):
        catalog.delete_model("acme/base")
    catalog.delete_model("acme/ft")
    assert catalog.gc(grace_seconds=0)[0] >= 2  # adapter file, card, manifest
    assert catalog.blobs.exists(base.file("w.safetensors").digest)
    catalog.delete_model("acme/base")
    catalog.gc(grace_seconds=0)
    assert list(catalog.blobs.iter_blobs()) == []
    assert catalog.list_models() == []


def test_concurrent_publish_of_one_name(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}"})
    outcomes: list[object] = []
    barrier = threading.Barrier(4)

    def publish() -> None:
        barrier.wait()
        try:
            outcomes.append(catalog.publish("acme/race", src).ref)
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("acme/race@1") == 1
    assert sum(isinstance(o, Conflict) for o in outcomes) == 3
    assert len(catalog.get_model("acme/race").versions) == 1


KILL_BEFORE_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from gptstore.settings import Settings
    from gptstore.catalog import repository

    real_session = repository.Database.session
    def killing_session(self, *, write=False):
        if write:  # all blobs are written; die before the transaction commits
            os.kill(os.getpid(), signal.SIGKILL)
        return real_session(self, write=write)
    repository.Database.session = killing_session
    catalog = repository.Catalog(Settings())
    catalog.publish("acme/killed", Path(sys.argv[1]))
    """
)


def test_kill_between_blob_write_and_commit_leaves_nothing(db_settings: Settings,
                                                           tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}", "model.safetensors": os.urandom(4096)})
    Catalog(db_settings).close()  # migrate first
    env = {**os.environ, "GPTSTORE_HOME": str(db_settings.home)}
    if db_settings.database_url:
        env["GPTSTORE_DATABASE_URL"] = db_settings.database_url
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_COMMIT, str(src)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    catalog = Catalog(db_settings)
    try:
        assert catalog.list_models() == []
        with pytest.raises(NotFound):
            catalog.get_model("acme/killed")
        written = list(catalog.blobs.iter_blobs())
        assert written, "the blobs were written before the kill"
        for digest, _ in written:
            assert catalog.blobs.verify(digest)  # no corrupt blob
        old = time.time() - 7200
        for _, path in written:
            os.utime(path, (old, old))
        catalog.gc()
        assert list(catalog.blobs.iter_blobs()) == []
        # and the name is free for a real publish
        assert catalog.publish("acme/killed", src).number == 1
    finally:
        catalog.close()
