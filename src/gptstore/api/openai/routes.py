"""`/v1/chat/completions`, `/v1/completions`, `/v1/classifications`: parse, check that
the caller may read the model, call the serving layer, answer JSON or SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from gptstore.api.deps import CatalogDep, PrincipalDep, ServingDep, UsageDep
from gptstore.api.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClassificationRequest,
    ClassificationResponse,
    CompletionRequest,
    CompletionResponse,
)
from gptstore.catalog.access import Principal
from gptstore.catalog.repository import Catalog

router = APIRouter(tags=["openai"])


async def _check_readable(catalog: Catalog, principal: Principal, model: str,
                          usage: Any) -> None:
    """The engine resolves store names as SYSTEM; a model this caller may not read is
    refused here first, with the same NotFound as a missing one. A request let through
    counts as one use of the model (written in batches: catalog/usage.py)."""
    await asyncio.to_thread(catalog.resolve, model, principal=principal)
    usage.count_request(model)


def _answer(result: Any) -> Any:
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    return JSONResponse(result.model_dump())


@router.post("/chat/completions", response_model=ChatCompletionResponse,
             summary="Chat completion (OpenAI-compatible; stream=true for SSE chunks)")
async def chat_completions(request: ChatCompletionRequest, serving: ServingDep,
                           catalog: CatalogDep, principal: PrincipalDep, usage: UsageDep) -> Any:
    await _check_readable(catalog, principal, request.model, usage)
    return _answer(await serving.chat(request))


@router.post("/completions", response_model=CompletionResponse,
             summary="Text completion of a raw prompt (OpenAI-compatible)")
async def completions(request: CompletionRequest, serving: ServingDep, catalog: CatalogDep,
                      principal: PrincipalDep, usage: UsageDep) -> Any:
    await _check_readable(catalog, principal, request.model, usage)
    return _answer(await serving.completion(request))


@router.post(
    "/classifications",
    response_model=ClassificationResponse,
    summary="Classify texts with a classifier model (gptstore extension)",
    description=(
        "Runs a classification model of the store (one fine-tuned with the "
        "classification task) on one text or a list of texts and returns, for each, the "
        "most probable label and the probability of every label. Not part of OpenAI's "
        "API; errors use OpenAI's envelope."
    ),
)
async def classifications(request: ClassificationRequest, serving: ServingDep,
                          catalog: CatalogDep, principal: PrincipalDep, usage: UsageDep
                          ) -> ClassificationResponse:
    await _check_readable(catalog, principal, request.model, usage)
    return await serving.classify(request)
