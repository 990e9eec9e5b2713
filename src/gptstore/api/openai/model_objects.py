"""`/v1/models`: store models as OpenAI `model` objects (id = store name), for the models
the request's principal may read."""

from __future__ import annotations

from fastapi import APIRouter

from gptstore.api.deps import CatalogDep, PrincipalDep
from gptstore.api.openai.protocol import ModelList, ModelObject
from gptstore.catalog.repository import ModelInfo, ModelSummaryInfo
from gptstore.errors import NotFound

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
    ref = f"{namespace}/{name}"
    try:
        if "@" in name:  # a version, as chat and completions take it: it must exist
            catalog.resolve(ref, principal=principal)
        model = catalog.get_model(ref, principal=principal)
    except NotFound as exc:
        raise NotFound(exc.message, param="model") from exc
    return ModelObject(id=ref, created=int(model.created_at.timestamp()),
                       owned_by=model.namespace)


@router.get("/models/{name}", response_model=ModelObject, include_in_schema=False)
def get_unnamespaced_model(_principal: PrincipalDep, name: str) -> ModelObject:
    """An id without a namespace (an OpenAI model's, say) is no store model: the 404 a
    client checks for (`model_not_found`), not the router's bare one (after the key's
    check, as every route)."""
    raise NotFound(f"model {name!r} is not in this store: store models are named "
                   "namespace/name (GET /v1/models lists them)", param="model")
