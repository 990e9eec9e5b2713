"""The store front's JSON routes under `/api`: search with filters and sorts, the home
page's categories, likes and ratings, a model's card as sanitised HTML, and file
downloads (counted).

Like `catalog.py`, the router only parses HTTP and builds wire types; the catalog
decides visibility and order (`Catalog.search_models`), `catalog/reactions.py` keeps
one like and one rating per user, and `api/store/identity.py` says who the user is.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse
from pydantic import Field

from gptstore.api.auth import WritePrincipal
from gptstore.api.deps import CatalogDep, PrincipalDep, UsageDep
from gptstore.api.errors import ErrorResponse
from gptstore.api.store.catalog import BAD_REQUEST, NOT_FOUND
from gptstore.api.store.identity import reacting_user
from gptstore.api.store.schemas import ModelPage, ModelSummary, StoreBaseModel
from gptstore.catalog.names import parse_ref
from gptstore.catalog.reactions import Reactions, ReactionsInfo
from gptstore.catalog.repository import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from gptstore.errors import PermissionDenied
from gptstore.web.cards import render_card_html

router = APIRouter(tags=["store front"])

SearchSort = Literal["trending", "downloads", "likes", "rating", "newest", "updated", "name"]

#: files whose download counts as one download of the model (as the Hugging Face Hub
#: counts a fetch of config.json): every loader reads exactly one of them
COUNTED_FILES = ("config.json", "adapter_config.json")


# -- wire types -------------------------------------------------------------------------


class Category(StoreBaseModel):
    """A shelf of the home page: a task or a kind of use, with its top models."""

    key: str
    title: str
    description: str
    filter: dict[str, str] = Field(description="The /api/search parameters of the shelf.")
    models: list[ModelSummary]


class Categories(StoreBaseModel):
    data: list[Category]


class ReactionsPublic(StoreBaseModel):
    likes: int
    rating: float = Field(description="Mean stars, 0 when unrated.")
    rating_count: int
    histogram: dict[str, int] = Field(description="Stars `1`..`5` -> ratings.")
    liked: bool = Field(description="Whether the caller likes the model.")
    my_stars: int | None = Field(description="The caller's rating, if any.")


class LikeRequest(StoreBaseModel):
    liked: bool = Field(description="true to like, false to take the like back.")


class RatingRequest(StoreBaseModel):
    stars: int | None = Field(description="1 to 5; null withdraws the caller's rating.")


class ListingUpdate(StoreBaseModel):
    """Fields of a model's listing to change; those left out stay as they are."""

    description: str | None = Field(default=None, description="Markdown, up to 2,000 "
                                                                "characters.")
    tags: list[str] | None = Field(default=None, description="Up to 20 tags of a-z, 0-9, "
                                                             "`.`, `_`, `+`, `-`.")


class CardHtml(StoreBaseModel):
    ref: str = Field(description="`namespace/name@N` of the version the card belongs to.")
    meta: dict[str, Any] = Field(description="The card's YAML front matter.")
    html: str = Field(description="The card's markdown as sanitised HTML.")


def _reactions(info: ReactionsInfo) -> ReactionsPublic:
    return ReactionsPublic(likes=info.likes, rating=info.rating,
                           rating_count=info.rating_count,
                           histogram={str(k): v for k, v in info.histogram.items()},
                           liked=info.liked, my_stars=info.my_stars)


# -- search and home ----------------------------------------------------------------------


@router.get("/search", response_model=ModelPage, responses=BAD_REQUEST,
            summary="Search the store: full text, filters, sorts, pages")
def search(
    catalog: CatalogDep,
    principal: PrincipalDep,
    q: Annotated[str | None, Query(
        description="Words to find in names, descriptions, tags and model cards; each "
                    "word must occur, as a prefix (`sent` finds `sentiment`).")] = None,
    task: Annotated[str | None, Query(description="`causal-lm` or `classification`.")] = None,
    base: Annotated[str | None, Query(
        description="`namespace/name` of a base: its fine-tunes (the model tree).")] = None,
    tag: Annotated[str | None, Query(description="Models with this tag.")] = None,
    license: Annotated[str | None, Query(description="Models under this license.")] = None,
    owner: Annotated[str | None, Query(description="Models of this namespace.")] = None,
    sort: Annotated[SearchSort, Query(
        description="`trending` (usage of the last 7 days, recent days weigh more), "
                    "`downloads`, `likes`, `rating`, `newest`, `updated` or `name`."
    )] = "trending",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(
        description="`next_cursor` of the previous page, with the same query.")] = None,
) -> ModelPage:
    page = catalog.search_models(text=q, task=task, base=base, tag=tag, license=license,
                                 owner=owner, sort=sort, limit=limit, cursor=cursor,
                                 principal=principal)
    return ModelPage(data=[ModelSummary.model_validate(m) for m in page.models],
                     next_cursor=page.next_cursor, has_more=page.has_more)


#: the home page's shelves. The store's tasks are `causal-lm` and `classification`;
#: QA, translation and code are generative uses, found by their tags.
CATEGORIES: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("chat", "Chat", "Generative models that follow a conversation.", {"task": "causal-lm"}),
    ("classification", "Classification", "Sentiment, topics, intents: a label per text.",
     {"task": "classification"}),
    ("qa", "Question answering", "Answer questions about a text or the world.",
     {"tag": "qa"}),
    ("translation", "Translation", "From one language to another.", {"tag": "translation"}),
    ("code", "Code", "Write and complete programs.", {"tag": "code"}),
)
CATEGORY_SIZE = 4


@router.get("/categories", response_model=Categories,
            summary="The home page's shelves, each with its top models by trending")
def categories(catalog: CatalogDep, principal: PrincipalDep) -> Categories:
    shelves = []
    for key, title, description, filters in CATEGORIES:
        page = catalog.search_models(sort="trending", limit=CATEGORY_SIZE,
                                     principal=principal, **filters)
        shelves.append(Category(key=key, title=title, description=description,
                                filter=filters,
                                models=[ModelSummary.model_validate(m) for m in page.models]))
    return Categories(data=shelves)


# -- likes and ratings ------------------------------------------------------------------


def _user(principal: Any) -> str:
    user = reacting_user(principal)
    if user is None:
        raise PermissionDenied("sign in to like or rate models", param="authorization")
    return user


REACT_ERRORS: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    403: {"model": ErrorResponse, "description": "The caller must sign in first."},
}


@router.get("/models/{namespace}/{name}/reactions", response_model=ReactionsPublic,
            responses=NOT_FOUND, summary="A model's likes, ratings and the caller's own")
def get_reactions(catalog: CatalogDep, principal: PrincipalDep, namespace: str, name: str
                  ) -> ReactionsPublic:
    reactions = Reactions(catalog.db)
    return _reactions(reactions.get(f"{namespace}/{name}", principal,
                                    reacting_user(principal)))


@router.put("/models/{namespace}/{name}/like", response_model=ReactionsPublic,
            responses=REACT_ERRORS, summary="Like a model, or take the like back")
def put_like(catalog: CatalogDep, principal: WritePrincipal, namespace: str, name: str,
             body: LikeRequest) -> ReactionsPublic:
    return _reactions(Reactions(catalog.db).set_like(
        f"{namespace}/{name}", principal, _user(principal), body.liked))


@router.put("/models/{namespace}/{name}/rating", response_model=ReactionsPublic,
            responses=REACT_ERRORS, summary="Rate a model 1-5 stars (one rating per user)")
def put_rating(catalog: CatalogDep, principal: WritePrincipal, namespace: str, name: str,
               body: RatingRequest) -> ReactionsPublic:
    return _reactions(Reactions(catalog.db).set_rating(
        f"{namespace}/{name}", principal, _user(principal), body.stars))


# -- card and files -------------------------------------------------------------------------


@router.get("/models/{namespace}/{name}/card.html", response_model=CardHtml,
            responses=NOT_FOUND, summary="A version's model card as sanitised HTML")
def get_card_html(catalog: CatalogDep, principal: PrincipalDep, namespace: str, name: str,
                  version: Annotated[int | None, Query(ge=1, description=(
                      "Version number; the latest when left out."))] = None) -> CardHtml:
    ref = parse_ref(f"{namespace}/{name}", allow_version=False).full_name
    resolved = catalog.resolve(f"{ref}@{version}" if version else ref, principal=principal)
    meta, html = render_card_html(catalog.card(resolved, principal=principal))
    return CardHtml(ref=resolved.ref, meta=meta, html=html)


@router.get("/models/{namespace}/{name}/versions/{number}/files/{path:path}",
            response_class=FileResponse, responses={**NOT_FOUND, 200: {
                "description": "The file's bytes.",
                "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}}},
            summary="Download one file of a version (config.json counts as a download)")
async def download_file(catalog: CatalogDep, principal: PrincipalDep, usage: UsageDep,
                        namespace: str, name: str,
                        number: Annotated[int, Path(ge=1)], path: str) -> FileResponse:
    ref = parse_ref(f"{namespace}/{name}", allow_version=False).full_name
    version = await asyncio.to_thread(catalog.resolve, f"{ref}@{number}", principal=principal)
    entry = version.file(path)  # NotFound naming the file when the version lacks it
    if path in COUNTED_FILES:
        usage.count_download(version.model)
    return FileResponse(catalog.blobs.path(entry.digest), filename=path.rsplit("/", 1)[-1])
