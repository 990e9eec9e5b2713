"""Dependencies injected into routes (shared state from `app.state`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gptstore.catalog.repository import Catalog


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog  # type: ignore[no-any-return]


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
