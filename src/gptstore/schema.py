"""Every table of the store on one metadata: what the migrations build, and what the
schema test compares them with. Importing this registers each concern's tables."""

from __future__ import annotations

from typing import Any

from gptstore.accounts import tables as _account_tables  # noqa: F401  (registers them)
from gptstore.catalog import evaluations as _eval_tables  # noqa: F401  (suites, results)
from gptstore.catalog.tables import Base
from gptstore.jobs import tables as _job_tables  # noqa: F401  (registers the job tables)

metadata = Base.metadata


#: the full-text index of migration 0005, which the tables do not model: SQLite's FTS5
#: table (and the shadow tables FTS5 makes), PostgreSQL's generated tsvector and its index
_SEARCH_INDEX_NAMES = ("model_search_fts", "ix_model_search_tsv")


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """Alembic's filter for comparing the database with `metadata`: leaves out the
    database-specific search index."""
    if name is not None and name.startswith(_SEARCH_INDEX_NAMES):
        return False
    return not (type_ == "column" and name == "tsv"
                and getattr(obj, "table", None) is not None and obj.table.name == "model_search")
