"""SQLAlchemy tables of the catalog. The schema is changed only by migrations
(src/gptstore/migrations); these classes must match the newest migration."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Namespace(Base):
    """A user's or organisation's space of models (owners come with accounts)."""

    __tablename__ = "namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(96), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="user")  # user | org
    owner_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    models: Mapped[list[Model]] = relationship(back_populates="namespace")


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("namespace_id", "name", name="uq_models_namespace_name"),
        # the store front's sorts and filters (migration 0005, which says why)
        Index("ix_models_downloads", "downloads"),
        Index("ix_models_likes", "likes"),
        Index("ix_models_updated_at", "updated_at"),
        Index("ix_models_trending", "trending", "id"),
        Index("ix_models_task_trending", "task", "trending", "id"),
        Index("ix_models_rating", "rating", "rating_count", "id"),
        Index("ix_models_created_at", "created_at", "id"),
        Index("ix_models_license", "license"),
        Index("ix_models_base_model", "base_model"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(96))
    task: Mapped[str] = mapped_column(String(32), default="causal-lm")
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    license: Mapped[str | None] = mapped_column(String(64), nullable=True)
    visibility: Mapped[str] = mapped_column(String(16), default="public")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    likes: Mapped[int] = mapped_column(Integer, default=0)
    # The store front's denormalised columns (migration 0005), kept by catalog/search.py,
    # catalog/usage.py and catalog/reactions.py so that filters and sorts are one index.
    #: namespace/name of the latest version's base, for the "fine-tunes of" filter
    base_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)  # inference requests
    rating: Mapped[float] = mapped_column(Float, default=0.0)  # mean stars, 0 when unrated
    rating_count: Mapped[int] = mapped_column(Integer, default=0)
    trending: Mapped[float] = mapped_column(Float, default=0.0)  # decayed 7-day usage

    namespace: Mapped[Namespace] = relationship(back_populates="models")
    versions: Mapped[list[Version]] = relationship(
        back_populates="model", order_by="Version.number", cascade="all, delete-orphan"
    )


class Version(Base):
    """An immutable version of a model: exactly the files its manifest lists."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_versions_model_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    manifest_digest: Mapped[str] = mapped_column(String(71))
    #: "full" (all weights) or "adapter" (a LoRA adapter on top of `base_version`)
    kind: Mapped[str] = mapped_column(String(16), default="full")
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("versions.id", ondelete="RESTRICT"), nullable=True
    )
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship(back_populates="versions")
    base_version: Mapped[Version | None] = relationship(remote_side="Version.id")
    files: Mapped[list[VersionFile]] = relationship(
        back_populates="version", order_by="VersionFile.path", cascade="all, delete-orphan"
    )


class VersionFile(Base):
    __tablename__ = "version_files"
    __table_args__ = (UniqueConstraint("version_id", "path", name="uq_version_files_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(71), index=True)
    size: Mapped[int] = mapped_column(BigInteger)

    version: Mapped[Version] = relationship(back_populates="files")


class StoredFile(Base):
    """An uploaded file (training data, a results CSV): its bytes are one blob."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-<24 hex>
    owner: Mapped[str] = mapped_column(String(96), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    #: OpenAI's (deprecated) file status: "processed", or "error" when the check failed
    status: Mapped[str] = mapped_column(String(16), default="processed")
    #: the validation report of a fine-tune file (data/report.py), JSON
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# -- store front (migration 0005) ------------------------------------------------------


class ModelTag(Base):
    """One tag of a model, as a row, so a tag filter is an index lookup."""

    __tablename__ = "model_tags"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    tag: Mapped[str] = mapped_column(String(96), primary_key=True, index=True)


class ModelUsage(Base):
    """Inference requests and downloads of a model on one UTC day."""

    __tablename__ = "model_usage"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True, index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)


class ModelLike(Base):
    __tablename__ = "model_likes"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    user_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelRating(Base):
    __tablename__ = "model_ratings"
    __table_args__ = (CheckConstraint("stars BETWEEN 1 AND 5", name="ck_model_ratings_stars"),)

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    user_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    stars: Mapped[int] = mapped_column(SmallInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelSearch(Base):
    """A model's search document (name, description, tags, card). The index over it is
    the database's own (FTS5 / tsvector + GIN), made by migration 0005, not modelled here."""

    __tablename__ = "model_search"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    document: Mapped[str] = mapped_column(Text)
