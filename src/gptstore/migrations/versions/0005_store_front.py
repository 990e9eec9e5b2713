"""store front: full-text search index, tags, daily usage, likes, ratings

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

The search document of each model lives in `model_search` on both databases; the index
over it is the database's own: an FTS5 table (external content, kept in step by
triggers) on SQLite, a generated `tsvector` column with a GIN index on PostgreSQL.
Existing models are indexed here from their name, description and tags (their cards
join the document at their next publish).
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: the indexes of `models` this migration makes (catalog/tables.py lists the same)
INDEXES = {
    "ix_models_downloads": ("downloads",),
    "ix_models_likes": ("likes",),
    "ix_models_updated_at": ("updated_at",),
    "ix_models_trending": ("trending", "id"),
    "ix_models_task_trending": ("task", "trending", "id"),
    "ix_models_rating": ("rating", "rating_count", "id"),
    "ix_models_created_at": ("created_at", "id"),
    "ix_models_license": ("license",),
    "ix_models_base_model": ("base_model",),
}


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("base_model", sa.String(200), nullable=True))
        batch.add_column(sa.Column("requests", sa.BigInteger, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("rating", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("rating_count", sa.Integer, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("trending", sa.Float, nullable=False, server_default="0"))
    # An index per sort key, holding exactly the key's columns (the id last: PostgreSQL
    # does not order equal keys by it), so a page is an index walk even where most
    # models tie (trending is 0 for every model unused this week); one per filter.
    # (task, trending, id) serves the home page's shelves.
    for name, columns in INDEXES.items():
        op.create_index(name, "models", list(columns))

    op.create_table(
        "model_tags",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("tag", sa.String(96), primary_key=True),
    )
    op.create_index("ix_model_tags_tag", "model_tags", ["tag"])
    op.create_table(
        "model_usage",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("downloads", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_model_usage_day", "model_usage", ["day"])
    op.create_table(
        "model_likes",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("user_id", sa.String(96), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "model_ratings",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("user_id", sa.String(96), primary_key=True),
        sa.Column("stars", sa.SmallInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("stars BETWEEN 1 AND 5", name="ck_model_ratings_stars"),
    )
    op.create_table(
        "model_search",
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE model_search ADD COLUMN tsv tsvector GENERATED ALWAYS AS "
                   "(to_tsvector('english', document)) STORED")
        op.execute("CREATE INDEX ix_model_search_tsv ON model_search USING GIN (tsv)")
    else:
        # porter: "classifiers" finds "classifier", as PostgreSQL's english config does
        op.execute("CREATE VIRTUAL TABLE model_search_fts USING fts5(document, "
                   "content='model_search', content_rowid='model_id', "
                   "tokenize='porter unicode61')")
        op.execute("CREATE TRIGGER model_search_ai AFTER INSERT ON model_search BEGIN "
                   "INSERT INTO model_search_fts(rowid, document) "
                   "VALUES (new.model_id, new.document); END")
        op.execute("CREATE TRIGGER model_search_ad AFTER DELETE ON model_search BEGIN "
                   "INSERT INTO model_search_fts(model_search_fts, rowid, document) "
                   "VALUES ('delete', old.model_id, old.document); END")
        op.execute("CREATE TRIGGER model_search_au AFTER UPDATE ON model_search BEGIN "
                   "INSERT INTO model_search_fts(model_search_fts, rowid, document) "
                   "VALUES ('delete', old.model_id, old.document); "
                   "INSERT INTO model_search_fts(rowid, document) "
                   "VALUES (new.model_id, new.document); END")
    _backfill(bind)


def _backfill(bind: sa.Connection) -> None:
    """Index the models that exist: tags, search documents, the base of the latest
    version."""
    rows = bind.execute(sa.text(
        "SELECT m.id, n.name, m.name, m.description, m.tags FROM models m "
        "JOIN namespaces n ON n.id = m.namespace_id")).all()
    for model_id, namespace, name, description, tags in rows:
        tag_list = tags if isinstance(tags, list) else json.loads(tags or "[]")
        for tag in dict.fromkeys(str(t) for t in tag_list):
            bind.execute(sa.text("INSERT INTO model_tags (model_id, tag) VALUES (:m, :t)"),
                         {"m": model_id, "t": tag[:96]})
        document = " ".join([namespace, name, f"{namespace}/{name}", description or "",
                             *map(str, tag_list)])
        bind.execute(sa.text("INSERT INTO model_search (model_id, document) VALUES (:m, :d)"),
                     {"m": model_id, "d": document})
        base = bind.execute(sa.text(
            "SELECT bn.name, bm.name FROM versions v "
            "JOIN versions b ON b.id = v.base_version_id "
            "JOIN models bm ON bm.id = b.model_id JOIN namespaces bn ON bn.id = bm.namespace_id "
            "WHERE v.model_id = :m ORDER BY v.number DESC LIMIT 1"), {"m": model_id}).first()
        if base is not None:
            bind.execute(sa.text("UPDATE models SET base_model = :b WHERE id = :m"),
                         {"b": f"{base[0]}/{base[1]}", "m": model_id})


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.execute("DROP TABLE IF EXISTS model_search_fts")
    op.drop_table("model_search")
    op.drop_table("model_ratings")
    op.drop_table("model_likes")
    op.drop_index("ix_model_usage_day", table_name="model_usage")
    op.drop_table("model_usage")
    op.drop_index("ix_model_tags_tag", table_name="model_tags")
    op.drop_table("model_tags")
    for name in INDEXES:
        op.drop_index(name, table_name="models")
    with op.batch_alter_table("models") as batch:
        for column in ("trending", "rating_count", "rating", "requests", "base_model"):
            batch.drop_column(column)
