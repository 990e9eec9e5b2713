"""Every table of the store on one metadata: what the migrations build, and what the
schema test compares them with. Importing this registers each concern's tables."""

from __future__ import annotations

from gptstore.accounts import tables as _account_tables  # noqa: F401  (registers them)
from gptstore.catalog import evaluations as _eval_tables  # noqa: F401  (suites, results)
from gptstore.catalog.tables import Base
from gptstore.jobs import tables as _job_tables  # noqa: F401  (registers the job tables)

metadata = Base.metadata
