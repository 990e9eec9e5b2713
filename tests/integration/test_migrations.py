"""The schema is built only by migrations, identically on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from gptstore.schema import include_object, metadata
from gptstore.settings import Settings
from gptstore.storage.db import Database, current_revision, downgrade, head_revision, upgrade

TABLES = {"namespaces", "models", "versions", "version_files", "files", "jobs", "job_events",
          "job_checkpoints", "eval_suites", "eval_results", "alembic_version"}


def test_upgrade_matches_the_tables_and_downgrades(db_settings: Settings) -> None:
    db = Database(db_settings.db_url)
    try:
        assert current_revision(db.engine) is None
        upgrade(db.engine)
        assert current_revision(db.engine) == head_revision(db.engine)
        assert set(inspect(db.engine).get_table_names()) >= TABLES
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": include_object})
            diff = compare_metadata(context, metadata)
        assert diff == [], f"tables.py and the migrations disagree: {diff}"
        downgrade(db.engine, "base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        upgrade(db.engine)  # and back up again
        assert current_revision(db.engine) == head_revision(db.engine)
    finally:
        db.dispose()


def test_sqlite_runs_in_wal_mode(settings: Settings) -> None:
    db = Database(settings.db_url)
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.dispose()
