"""evaluation suites and results: eval_suites, eval_results

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_suites",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("data_digest", sa.String(71), nullable=False),
        sa.Column("data_name", sa.String(255), nullable=False),
        sa.Column("examples", sa.Integer, nullable=False),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("higher_is_better", sa.Boolean, nullable=False),
        sa.Column("license", sa.String(128), nullable=True),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("builtin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("suite_id", sa.Integer,
                  sa.ForeignKey("eval_suites.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version_id", sa.Integer,
                  sa.ForeignKey("versions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("data_digest", sa.String(71), nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("mode", sa.String(32), nullable=False),
        sa.Column("examples", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_eval_results_suite_id", "eval_results", ["suite_id"])
    op.create_index("ix_eval_results_version_id", "eval_results", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_eval_results_version_id", table_name="eval_results")
    op.drop_index("ix_eval_results_suite_id", table_name="eval_results")
    op.drop_table("eval_results")
    op.drop_table("eval_suites")
