"""`/api/models`: the store's catalog as JSON (listing, one model, its card)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from gptstore.api.deps import CatalogDep

router = APIRouter(tags=["store"])


@router.get("/models")
def list_models(
    catalog: CatalogDep,
    task: str | None = None,
    search: str | None = Query(default=None, alias="q"),
    sort: str = "name",
) -> dict[str, Any]:
    models = catalog.list_models(task=task, search=search, sort=sort)
    return {"models": [m.to_dict() for m in models]}


@router.get("/models/{namespace}/{name}")
def get_model(catalog: CatalogDep, namespace: str, name: str) -> dict[str, Any]:
    return catalog.get_model(f"{namespace}/{name}").to_dict()


@router.get("/models/{namespace}/{name}/card", response_class=PlainTextResponse)
def get_card(catalog: CatalogDep, namespace: str, name: str) -> str:
    return catalog.card(catalog.resolve(f"{namespace}/{name}"))
