"""`/api/models`: the store's catalog over HTTP.

A keyset-paginated listing, one model with its versions, one version, a model's card.
The router parses HTTP, calls the catalog with the request's principal and builds the
wire types of `schemas.py`; it decides nothing about visibility or order itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse

from gptstore.api.auth import WritePrincipal, admin_principal, audit
from gptstore.api.deps import CatalogDep, PrincipalDep
from gptstore.api.errors import ErrorResponse
from gptstore.api.store.schemas import (
    EvaluationPublic,
    ModelPage,
    ModelPublic,
    ModelSummary,
    ModelUpdate,
    Sort,
    VersionPublic,
)
from gptstore.catalog.evaluations import Evaluations, ResultInfo, SuiteInfo
from gptstore.catalog.listing import update_listing
from gptstore.catalog.names import parse_ref
from gptstore.catalog.repository import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Catalog,
    ModelInfo,
    VersionInfo,
)
from gptstore.errors import PermissionDenied

router = APIRouter(tags=["store"])

BAD_REQUEST: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A parameter is invalid; `param` names it."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **BAD_REQUEST,
    404: {"model": ErrorResponse,
          "description": "No such model or version (or none the caller may read)."},
}


def model_public(info: ModelInfo, catalog: Catalog) -> ModelPublic:
    summary = ModelSummary.model_validate(info.summary())
    return ModelPublic(**dict(summary), versions=versions_public(catalog, info.versions))


def versions_public(catalog: Catalog, versions: list[VersionInfo]) -> list[VersionPublic]:
    """The versions with their suite results (one query for all of them)."""
    results = Evaluations(catalog).results_of_versions([v.id for v in versions])
    return [VersionPublic.model_validate(v).model_copy(update={"evaluations": [
        evaluation_public(suite, result) for suite, result in results[v.id]]})
        for v in versions]


def evaluation_public(suite: SuiteInfo, result: ResultInfo) -> EvaluationPublic:
    return EvaluationPublic(
        suite=suite.name, task=suite.task, metric=suite.metric,
        higher_is_better=suite.higher_is_better, score=result.score, mode=result.mode,
        examples=result.examples, data_digest=result.data_digest,
        current=result.data_digest == suite.data_digest, evaluated_at=result.created_at)


@router.get("/models", response_model=ModelPage, responses=BAD_REQUEST,
            summary="List models, one page at a time")
def list_models(
    catalog: CatalogDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE,
                                description="Models per page.")] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(
        description="`next_cursor` of the previous page; leave out for the first page. "
                    "Use it with the same `sort`.")] = None,
    task: Annotated[str | None, Query(
        description="Only models of this task (`causal-lm`, `classification`).")] = None,
    q: Annotated[str | None, Query(
        description="Case-insensitive substring of `namespace/name` or the "
                    "description.")] = None,
    sort: Annotated[Sort, Query(
        description="`name` (A-Z), `updated` (newest first), `downloads` or `likes` "
                    "(most first, then by name).")] = "name",
) -> ModelPage:
    page = catalog.search_models(task=task, search=q, sort=sort, limit=limit, cursor=cursor,
                                 principal=principal)
    return ModelPage(data=[ModelSummary.model_validate(m) for m in page.models],
                     next_cursor=page.next_cursor, has_more=page.has_more)


@router.get("/models/{namespace}/{name}", response_model=ModelPublic, responses=NOT_FOUND,
            summary="One model with all its versions and their files")
def get_model(catalog: CatalogDep, principal: PrincipalDep, namespace: str, name: str
              ) -> ModelPublic:
    return model_public(catalog.get_model(f"{namespace}/{name}", principal=principal), catalog)


@router.get("/models/{namespace}/{name}/versions/{number}", response_model=VersionPublic,
            responses=NOT_FOUND, summary="One version with its lineage, metrics and files")
def get_version(catalog: CatalogDep, principal: PrincipalDep, namespace: str, name: str,
                number: Annotated[int, Path(ge=1, description="Version number.")]
                ) -> VersionPublic:
    ref = parse_ref(f"{namespace}/{name}", allow_version=False)
    version = catalog.resolve(f"{ref.full_name}@{number}", principal=principal)
    return versions_public(catalog, [version])[0]


@router.get("/models/{namespace}/{name}/card", response_class=PlainTextResponse,
            responses={**NOT_FOUND, 200: {
                "description": "The latest version's model card: markdown with YAML "
                               "front matter, as on the Hugging Face Hub.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}},
            summary="A model's card")
def get_card(catalog: CatalogDep, principal: PrincipalDep, namespace: str, name: str) -> str:
    return catalog.card(f"{namespace}/{name}", principal=principal)


@router.patch("/models/{namespace}/{name}", response_model=ModelPublic, responses={
    **NOT_FOUND, 403: {"model": ErrorResponse,
                       "description": "The caller may read the model but not change it."}},
    summary="Edit a model's listing (description, tags: the write right on its namespace) "
            "or its visibility (an admin-scope key and the admin right)")
def update_model(catalog: CatalogDep, principal: WritePrincipal, namespace: str, name: str,
                 update: ModelUpdate, request: Request) -> ModelPublic:
    full_name = f"{namespace}/{name}"
    before = catalog.get_model(full_name, principal=principal)  # NotFound when hidden
    owner_id = catalog.namespace_owner(namespace)
    edits_listing = update.description is not None or update.tags is not None
    # every right is checked before anything changes: a refused field changes nothing
    if edits_listing and not principal.may_write_namespace(owner_id):
        raise PermissionDenied(
            f"only the owner of namespace {namespace!r} (or its organisation's writers) "
            f"may edit {full_name}", param="model")
    if update.visibility is not None:
        admin_principal(request)  # the key's scope: publishing is an admin act
        if not principal.may_write_namespace(owner_id, need="admin"):
            raise PermissionDenied(f"changing the visibility of {full_name} needs the admin "
                                   "role on its namespace", param="visibility")
    if edits_listing:
        update_listing(catalog.db, full_name, description=update.description,
                       tags=update.tags)
        audit(request, "edit", full_name, {k: v for k, v in (
            ("description", update.description), ("tags", update.tags)) if v is not None})
    if update.visibility is not None:
        catalog.set_visibility(full_name, update.visibility, principal=principal)
        audit(request, "visibility", full_name,
              {"from": before.visibility, "to": update.visibility})
    return model_public(catalog.get_model(full_name, principal=principal), catalog)
