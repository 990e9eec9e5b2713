"""The app in-process (FastAPI's TestClient, lifespan included) over a real SQLite
catalog in a temporary store home, seeded through `Catalog.publish`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import Publisher
from fastapi.testclient import TestClient

from gptstore.api.app import build_app
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def store(client: TestClient) -> Catalog:
    """The catalog the app serves (the same object, so no cache can hide a write)."""
    return client.app.state.catalog  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def publish(store: Catalog, tmp_path: Path) -> Publisher:
    return Publisher(store, tmp_path / "sources")
