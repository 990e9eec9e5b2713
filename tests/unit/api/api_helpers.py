"""Helpers of the API tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.catalog.tables import Model, Namespace


class Publisher:
    """Publishes small folders into the store and edits rows publish does not set."""

    def __init__(self, catalog: Catalog, root: Path) -> None:
        self.catalog = catalog
        self.root = root
        self.count = 0

    def __call__(self, name: str, files: dict[str, bytes] | None = None,
                 **kwargs: Any) -> VersionInfo:
        self.count += 1
        folder = self.root / f"src-{self.count}"
        folder.mkdir(parents=True)
        for rel, data in (files or {"config.json": b"{}"}).items():
            (folder / rel).write_bytes(data)
        return self.catalog.publish(name, folder, **kwargs)

    def set(self, name: str, **values: Any) -> None:
        namespace, short = name.split("/")
        with self.catalog.db.session(write=True) as session:
            model = session.scalars(select(Model).join(Namespace).where(
                Namespace.name == namespace, Model.name == short)).one()
            for key, value in values.items():
                setattr(model, key, value)
