"""Shared fixtures: an isolated store home, catalogs on SQLite and PostgreSQL, tiny
random models (GPT-2 and Llama with a real BPE tokenizer), built once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptstore.settings import Settings

PG_ENV = "GPTSTORE_TEST_DATABASE_URL"


#: what every test runs with besides its own home: no network, and exact fp32 by
#: default, so that tests comparing numbers or greedy text with a reference mean the same
#: on every CPU (the precision choice has its own tests,
#: tests/unit/inference/test_precision.py, which set auto themselves)
ISOLATED = {"GPTSTORE_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "GPTSTORE_INFERENCE_DTYPE": "float32", "GPTSTORE_TRAINING_PRECISION": "fp32"}


def _isolate(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for key in list(os.environ):
        if key.startswith("GPTSTORE_") and key != PG_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv("GPTSTORE_HOME", str(home))
    for key, value in ISOLATED.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The isolation from the session's start: module- and session-scoped fixtures are
    set up before any function-scoped one, and the settings they build or the commands
    they run must see what the tests see (on a CPU where auto picks bf16, a store built
    with the user's settings trained in bf16 beside a resumed run in fp32)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(monkeypatch, tmp_path_factory.mktemp("session-home"))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's GPTSTORE_* variables or home, nor the network: each its
    own home, and whatever a test changes is undone after it."""
    _isolate(monkeypatch, tmp_path / "home")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", offline=True)


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped afterwards)."""
    url = _pg_admin_url()
    if not url:
        pytest.skip(f"{PG_ENV} is not set: PostgreSQL tests skipped")
    import psycopg

    name = f"gptstore_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_pg(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings whose catalog database is SQLite or PostgreSQL (each test runs on both)."""
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home", offline=True)
    url = request.getfixturevalue("pg_database")
    _reset_pg(url)
    return Settings(home=tmp_path / "home", offline=True, database_url=url)


@pytest.fixture
def catalog(db_settings: Settings) -> Iterator[object]:
    from gptstore.catalog.repository import Catalog

    cat = Catalog(db_settings)
    yield cat
    cat.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gptstore.testing.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ("gpt2", "llama")}


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request: pytest.FixtureRequest, tiny_models: dict[str, Path]) -> Path:
    return tiny_models[request.param]
