"""`/v1/models`: store models as OpenAI `model` objects (id = store name), for the models
the request's principal may read."""

from __future__ import annotations

from fastapi import APIRouter

from gptstore.api.deps import CatalogDep, PrincipalDep
from gptstore.api.openai.protocol import ModelList, ModelObject
from gptstore.catalog.repository import ModelInfo, ModelSummaryInfo

router = APIRouter(tags=["openai"])


def _model_object(model: ModelInfo | ModelSummaryInfo) -> ModelObject:
    return ModelObject(id=model.name, created=int(model.created_at.timestamp()),
                       owned_by=model.namespace)


@router.get("/models", response_model=ModelList)
def list_models(catalog: CatalogDep, principal: PrincipalDep) -> ModelList:
    # OpenAI's list is not paginated: every readable model, read a page at a time.
    return ModelList(data=[_model_object(m) for m in catalog.list_models(principal=principal)])


@router.get("/models/{namespace}/{name}", response_model=ModelObject)
def get_model(catalog: CatalogDep, principal: PrincipalDep, namespace: str, name: str
              ) -> ModelObject:
    return _model_object(catalog.get_model(f"{namespace}/{name}", principal=principal))
