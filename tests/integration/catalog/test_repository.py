"""Catalog repository on SQLite and PostgreSQL: publish, resolve, dedupe, delete, gc,
the atomicity of publishing (a killed publish leaves nothing visible), keyset-paged
listings and search, and what a principal may read."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select

from gptstore.catalog.access import ANONYMOUS
from gptstore.catalog.cards import parse_card
from gptstore.catalog.repository import Catalog, VersionSummaryInfo, encode_cursor
from gptstore.catalog.tables import Model, Namespace
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


def test_the_card_shows_the_api_of_the_store_it_was_published_in(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", host="0.0.0.0", port=8611)
    catalog = Catalog(settings)
    try:
        version = catalog.publish("acme/m", _folder(tmp_path, "m", {"config.json": b"{}"}))
        assert 'OpenAI(base_url="http://127.0.0.1:8611/v1"' in catalog.card(version)
    finally:
        catalog.close()


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


def test_first_models_of_a_new_namespace_published_at_once_all_land(
        catalog: Catalog, tmp_path: Path) -> None:
    # distinct names in one namespace nobody has used yet: every publish must succeed
    # (two workers publishing their first jobs' models raced on creating the namespace)
    src = _folder(tmp_path, "m", {"config.json": b"{}"})
    outcomes: list[object] = []
    barrier = threading.Barrier(6)

    def publish(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(catalog.publish(f"fresh/m{i}", src).ref)
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(str, outcomes)) == [f"fresh/m{i}@1" for i in range(6)]


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


# -- paged listing, search and access -------------------------------------------------

T0 = datetime(2025, 1, 1, tzinfo=UTC)

#: name -> (downloads, likes, minutes after T0 of its last update); published in this
#: order, so ids increase down the list. Ties on purpose: the key's later columns decide.
SEED = {
    "acme/alpha": (5, 1, 3),
    "acme/bravo": (9, 1, 1),
    "beta/charlie": (5, 3, 3),
    "acme/delta": (0, 1, 2),
    "zulu/echo": (9, 0, 0),
}
EXPECTED_ORDER = {
    "name": ["acme/alpha", "acme/bravo", "acme/delta", "beta/charlie", "zulu/echo"],
    # newest first; alpha and charlie tie, the later id (charlie) first
    "updated": ["beta/charlie", "acme/alpha", "acme/delta", "acme/bravo", "zulu/echo"],
    # most first, ties by name
    "downloads": ["acme/bravo", "zulu/echo", "acme/alpha", "beta/charlie", "acme/delta"],
    "likes": ["beta/charlie", "acme/alpha", "acme/bravo", "acme/delta", "zulu/echo"],
}


def _set(catalog: Catalog, name: str, **values: object) -> None:
    namespace, short = name.split("/")
    with catalog.db.session(write=True) as session:
        model = session.scalars(select(Model).join(Namespace).where(
            Namespace.name == namespace, Model.name == short)).one()
        for key, value in values.items():
            setattr(model, key, value)


def _seed(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "seed", {"config.json": b"{}"})
    for name, (downloads, likes, minutes) in SEED.items():
        catalog.publish(name, src, description=f"model {name}")
        _set(catalog, name, downloads=downloads, likes=likes,
             updated_at=T0 + timedelta(minutes=minutes))


def _all_pages(catalog: Catalog, sort: str, limit: int, **kwargs: object) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = catalog.search_models(sort=sort, limit=limit, cursor=cursor, **kwargs)
        pages.append([m.name for m in page.models])
        assert page.has_more == (page.next_cursor is not None)
        if not page.has_more:
            return pages
        cursor = page.next_cursor


@pytest.mark.parametrize("sort", ["name", "updated", "downloads", "likes"])
def test_keyset_pages_in_every_sort(catalog: Catalog, tmp_path: Path, sort: str) -> None:
    _seed(catalog, tmp_path)
    expected = EXPECTED_ORDER[sort]
    assert _all_pages(catalog, sort, 2) == [expected[0:2], expected[2:4], expected[4:5]]
    assert _all_pages(catalog, sort, 5) == [expected]
    assert [m.name for m in catalog.list_models(sort=sort)] == expected


def test_a_cursor_survives_inserts_before_and_after_it(catalog: Catalog,
                                                       tmp_path: Path) -> None:
    _seed(catalog, tmp_path)
    first = catalog.search_models(sort="name", limit=2)
    assert [m.name for m in first.models] == ["acme/alpha", "acme/bravo"]
    src = _folder(tmp_path, "new", {"config.json": b"{}"})
    catalog.publish("aaa/first", src)  # sorts before the cursor: not seen, nothing repeats
    catalog.publish("acme/charlie", src)  # sorts after it: seen in its place
    rest = catalog.search_models(sort="name", limit=10, cursor=first.next_cursor)
    assert [m.name for m in rest.models] == ["acme/charlie", "acme/delta", "beta/charlie",
                                             "zulu/echo"]
    assert rest.has_more is False and rest.next_cursor is None


def test_page_summaries_carry_the_latest_version(catalog: Catalog, tmp_path: Path) -> None:
    base = catalog.publish("acme/base", _folder(tmp_path, "b", {"w.safetensors": b"base"}),
                           metrics={"final": {"accuracy": 0.5, "loss": 1}, "curves": {}})
    src = _folder(tmp_path, "a", {"adapter.safetensors": b"adapter-bytes"})
    catalog.publish("acme/tuned", src, kind="adapter", base=base.ref)
    v2 = catalog.publish("acme/tuned", src, kind="adapter", base=base.ref, new_model=False,
                         metrics={"accuracy": 0.75})
    page = catalog.search_models()
    by_name = {m.name: m for m in page.models}
    assert by_name["acme/base"].latest == VersionSummaryInfo(
        number=1, kind="full", base=None, size=base.size,
        metrics={"accuracy": 0.5, "loss": 1.0})
    assert by_name["acme/tuned"].latest == VersionSummaryInfo(
        number=2, kind="adapter", base="acme/base@1", size=v2.size, metrics={"accuracy": 0.75})
    assert by_name["acme/tuned"].to_dict()["latest_version"] == 2
    assert by_name["acme/tuned"].created_at.tzinfo is not None  # aware UTC on both databases


def test_a_page_loads_only_its_models_and_their_latest_versions(catalog: Catalog,
                                                                 tmp_path: Path) -> None:
    _seed(catalog, tmp_path)
    src = _folder(tmp_path, "v2", {"config.json": b"{2}"})
    catalog.publish("acme/alpha", src, new_model=False)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(catalog.db.engine, "before_cursor_execute", record)
    try:
        page = catalog.search_models(sort="name", limit=3)
    finally:
        event.remove(catalog.db.engine, "before_cursor_execute", record)
    assert [m.name for m in page.models] == ["acme/alpha", "acme/bravo", "acme/delta"]
    assert page.models[0].latest is not None and page.models[0].latest.number == 2
    # one query for the page's models, one for their latest versions: no N+1, no files,
    # no lineage, no other versions
    assert len(statements) == 2, statements
    assert "FROM models JOIN namespaces" in statements[0]
    assert "LIMIT" in statements[0]
    assert "max(versions.number)" in statements[1]
    for statement in statements:
        assert "version_files" not in statement
        assert "lineage" not in statement


def test_search_is_a_literal_case_insensitive_substring(catalog: Catalog,
                                                        tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}"})
    catalog.publish("acme/a_b", src, description="100% fresh")
    catalog.publish("acme/axb", src, description="1000 fresh")
    catalog.publish("other/thing", src, description="Mentions ACME/A_B in passing")

    def names(search: str) -> list[str]:
        return [m.name for m in catalog.search_models(search=search).models]

    assert names("a_b") == ["acme/a_b", "other/thing"]  # `_` is not a wildcard
    assert names("0%") == ["acme/a_b"]  # nor is `%`
    assert names("%") == ["acme/a_b"]
    assert names("ACME/A") == ["acme/a_b", "acme/axb", "other/thing"]  # `/` and case
    assert names("FRESH") == ["acme/a_b", "acme/axb"]
    assert names("nothing like it") == []


@pytest.mark.parametrize(("kwargs", "param", "message"), [
    ({"limit": 0}, "limit", "from 1 to 200"),
    ({"limit": 201}, "limit", "from 1 to 200"),
    ({"sort": "random"}, "sort", "unknown sort 'random'"),
    ({"task": "text-generation"}, "task", "unknown task 'text-generation'"),
    ({"cursor": "not-base64!"}, "cursor", "not one this store returned"),
    ({"cursor": ""}, "cursor", "not one this store returned"),
    # valid base64 of JSON, but not a cursor / a key of the wrong shape or type
    ({"cursor": "eyJhIjoxfQ"}, "cursor", "not one this store returned"),
    ({"cursor": encode_cursor("name", ["acme", "alpha"])}, "cursor", "not one this store"),
    ({"cursor": encode_cursor("name", ["acme", "alpha", "1"])}, "cursor", "not one this"),
    ({"cursor": encode_cursor("updated", ["yesterday", 1]), "sort": "updated"}, "cursor",
     "not one this store returned"),
    ({"cursor": encode_cursor("likes", [True, "acme", "a", 1]), "sort": "likes"}, "cursor",
     "not one this store returned"),
    ({"cursor": encode_cursor("likes", [3, "acme", "a", 1])}, "cursor",
     "cursor belongs to sort='likes', not sort='name'"),
])
def test_bad_page_requests_name_the_parameter(catalog: Catalog, kwargs: dict[str, object],
                                              param: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        catalog.search_models(**kwargs)  # type: ignore[arg-type]
    assert info.value.param == param
    assert message in info.value.message


def test_a_model_anonymous_may_not_read_is_missing(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}"})
    catalog.publish("acme/open", src)
    hidden = catalog.publish("acme/hidden", src)
    _set(catalog, "acme/hidden", visibility="private")

    def missing(call: Callable[[], object]) -> str:
        with pytest.raises(NotFound) as info:
            call()
        return info.value.message

    for name in ("acme/hidden", "acme/nothing"):
        expected = (f"model {name} is not in the store; see `gptstore models list` or pull "
                    "/ import it first")
        assert missing(lambda n=name: catalog.get_model(n, principal=ANONYMOUS)) == expected
        assert missing(lambda n=name: catalog.resolve(n, principal=ANONYMOUS)) == expected
        assert missing(lambda n=name: catalog.resolve(f"{n}@1", principal=ANONYMOUS)
                       ) == expected
        assert missing(lambda n=name: catalog.card(n, principal=ANONYMOUS)) == expected
        assert missing(lambda n=name: catalog.export(n, tmp_path / "out",
                                                     principal=ANONYMOUS)) == expected
        assert catalog.exists(name, principal=ANONYMOUS) is False
    assert missing(lambda: catalog.card(hidden, principal=ANONYMOUS)) == (
        "model acme/hidden is not in the store; see `gptstore models list` or pull / "
        "import it first")
    assert missing(lambda: catalog.get_version(hidden.id, principal=ANONYMOUS)) == (
        f"version id {hidden.id} does not exist")
    assert missing(lambda: catalog.get_version(10_000)) == "version id 10000 does not exist"
    assert [m.name for m in catalog.list_models(principal=ANONYMOUS)] == ["acme/open"]
    assert [m.name for m in catalog.search_models(principal=ANONYMOUS).models] == [
        "acme/open"]
    # SYSTEM (the default) reads everything
    assert [m.name for m in catalog.list_models()] == ["acme/hidden", "acme/open"]
    assert catalog.resolve("acme/hidden").id == hidden.id
    assert catalog.get_version(hidden.id).ref == "acme/hidden@1"
    assert catalog.card("acme/hidden").startswith("---\n")
    assert catalog.exists("acme/hidden") is True


def test_a_hidden_model_does_not_shorten_a_page(catalog: Catalog, tmp_path: Path) -> None:
    _seed(catalog, tmp_path)
    _set(catalog, "acme/bravo", visibility="private")
    visible = [n for n in EXPECTED_ORDER["name"] if n != "acme/bravo"]
    assert _all_pages(catalog, "name", 2, principal=ANONYMOUS) == [visible[0:2], visible[2:4]]


def test_the_engine_resolver_reuses_a_resolution_until_a_write_or_its_time(
        catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptstore.inference import store

    src = _folder(tmp_path, "m", {"config.json": b"{}", "model.safetensors": b"weights"})
    catalog.publish("acme/m", src)
    resolve = store.store_resolver(catalog)
    queries: list[str] = []
    event.listen(catalog.db.engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: queries.append(statement))
    first = resolve("acme/m")
    asked = len(queries)
    assert asked > 0
    assert resolve("acme/m") is first and len(queries) == asked  # no query the second time
    with pytest.raises(NotFound):
        resolve("acme/missing")
    with pytest.raises(NotFound):  # a miss is never remembered
        resolve("acme/missing")
    catalog.publish("acme/m", src, new_model=False)  # a write in this process ...
    second = resolve("acme/m")  # ... is seen at once
    assert second is not first
    # past its time, a name is asked again (a write by another process is seen then)
    later = time.monotonic() + store.RESOLVE_CACHE_S + 1
    monkeypatch.setattr(store, "time", SimpleNamespace(monotonic=lambda: later))
    asked = len(queries)
    third = resolve("acme/m")
    assert len(queries) > asked and third is not second


def test_check_readable_answers_like_a_missing_model(catalog: Catalog, tmp_path: Path) -> None:
    src = _folder(tmp_path, "m", {"config.json": b"{}", "model.safetensors": b"weights"})
    catalog.publish("acme/secret", src, visibility="private")
    catalog.check_readable("acme/secret@7")  # SYSTEM reads all; the version is not checked
    with pytest.raises(NotFound) as hidden:
        catalog.check_readable("acme/secret", principal=ANONYMOUS)
    with pytest.raises(NotFound) as missing:
        catalog.check_readable("acme/nothing", principal=ANONYMOUS)
    assert str(hidden.value).replace("secret", "X") == str(missing.value).replace("nothing", "X")
