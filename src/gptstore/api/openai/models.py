"""`/v1/models`: store models as OpenAI `model` objects (id = store name)."""

from __future__ import annotations

from fastapi import APIRouter

from gptstore.api.deps import CatalogDep
from gptstore.api.openai.protocol import ModelCard, ModelList
from gptstore.catalog.repository import ModelInfo

router = APIRouter(tags=["openai"])


def _card(model: ModelInfo) -> ModelCard:
    return ModelCard(id=model.name, created=int(model.created_at.timestamp()),
                     owned_by=model.namespace)


@router.get("/models", response_model=ModelList)
def list_models(catalog: CatalogDep) -> ModelList:
    return ModelList(data=[_card(m) for m in catalog.list_models()])


@router.get("/models/{namespace}/{name}", response_model=ModelCard)
def get_model(catalog: CatalogDep, namespace: str, name: str) -> ModelCard:
    return _card(catalog.get_model(f"{namespace}/{name}"))
