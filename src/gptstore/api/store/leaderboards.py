"""`/api/suites` and `/api/leaderboards/{suite}`: evaluation suites and the models ranked
on them (wire types here, built from `catalog.evaluations`; nothing runs a model)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import Field

from gptstore.api.deps import CatalogDep, PrincipalDep
from gptstore.api.errors import ErrorResponse
from gptstore.api.store.schemas import StoreBaseModel
from gptstore.catalog.evaluations import Evaluations, leaderboard

router = APIRouter(tags=["evaluation"])


class SuitePublic(StoreBaseModel):
    name: str
    task: str = Field(description="classification, causal-lm, qa, translation or code.")
    description: str
    data_digest: str = Field(description="`sha256:<hex>` of the suite's data: results on "
                                         "other data are not ranked with these.")
    data_name: str
    examples: int
    prompt: dict[str, Any] = Field(description="How examples are asked (template, chat, "
                                               "shots, verbalizers, max_tokens).")
    metric: str = Field(description="The metric that ranks models.")
    higher_is_better: bool
    license: str | None
    source: str | None
    builtin: bool


class SuiteList(StoreBaseModel):
    data: list[SuitePublic]


class LeaderboardLineage(StoreBaseModel):
    base: str | None = Field(description="`namespace/name@N` of the base version.")
    training_data: str | None = Field(description="Digest of the fine-tune's training data.")
    method: str | None = None


class LeaderboardRow(StoreBaseModel):
    rank: int
    model: str
    version: int
    ref: str
    is_base: bool = Field(description="A base model (no base version): ranked first.")
    base: str | None
    kind: str
    task: str
    score: float | None = Field(description="The suite's metric.")
    metrics: dict[str, Any]
    mode: str = Field(description="`classifier`, or `k-shot` for a base model asked.")
    examples: int
    data_digest: str
    evaluated_at: datetime
    url: str = Field(description="The version's page in this API (its lineage).")
    lineage: LeaderboardLineage


class Leaderboard(StoreBaseModel):
    suite: SuitePublic
    rows: list[LeaderboardRow]


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such suite."}}


@router.get("/suites", response_model=SuiteList, summary="The evaluation suites")
def list_suites(catalog: CatalogDep, principal: PrincipalDep) -> SuiteList:
    del principal  # asked for its check only: the suites are readable by any caller
    return SuiteList(data=[SuitePublic.model_validate(s.to_dict())
                           for s in Evaluations(catalog).list_suites()])


@router.get("/leaderboards/{suite}", response_model=Leaderboard, responses=NOT_FOUND,
            summary="Models ranked on a suite, base models first")
def get_leaderboard(catalog: CatalogDep, principal: PrincipalDep, suite: str) -> Leaderboard:
    return Leaderboard.model_validate(leaderboard(catalog, suite, principal=principal))
