"""`/v1/chat/completions`, `/v1/completions`, `/v1/classifications`: parse, check that
the caller may read the model, wait for a turn at the fair gate (api/limits.py), call
the serving layer, answer JSON or SSE.

A request holds its place at the gate until its answer is complete: for a stream until
the last chunk or the client's hang-up; for a JSON answer until it is built, or until
the client hangs up, which cancels the engine's work at once (checked every
`DISCONNECT_POLL_S`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gptstore.api.auth import rate_key
from gptstore.api.deps import CatalogDep, PrincipalDep, UsageDep, get_serving
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
    """The engine resolves store names as SYSTEM (and reuses what it resolved for a
    moment: inference/store.py); a model this caller may not read, or that was just
    deleted, is refused here first, with the same NotFound as a missing one. A request
    let through counts as one use of the model (written in batches: catalog/usage.py)."""
    await asyncio.to_thread(catalog.check_readable, model, principal=principal)
    usage.count_request(model)


DISCONNECT_POLL_S = 0.25
#: the status logged for a request whose client left before its answer (nginx's 499)
CLIENT_CLOSED = 499


async def _admitted(request: Request, principal: Principal,
                    work: Callable[[], Awaitable[Any]]) -> Any:
    """Run `work` holding a place at the gate; a stream keeps it until it ends."""
    gate = request.app.state.gate
    key = rate_key(request, principal) or "local"
    # a client that leaves while it waits gives its place up at once
    await _unless_disconnected(request, lambda: gate.acquire(key))
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gate.release(key)

    try:
        result = await _unless_disconnected(request, work)
    except BaseException:
        release()
        raise
    if isinstance(result, AsyncIterator):
        return _release_after(result, release)
    release()
    return result


async def _release_after(stream: AsyncIterator[str], release: Callable[[], None]
                         ) -> AsyncIterator[str]:
    try:
        async for item in stream:
            yield item
    finally:
        release()
        await stream.aclose()  # type: ignore[attr-defined]


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, work: Callable[[], Awaitable[Any]]) -> Any:
    task = asyncio.ensure_future(work())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                if task.done():  # finished meanwhile: what it holds is handed on as usual
                    return task.result()
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()  # the serving layer cancels the engine's sequences
            await asyncio.gather(task, return_exceptions=True)


async def _serve(request: Request, principal: Principal, work: Callable[[], Awaitable[Any]]
                 ) -> Any:
    try:
        return _answer(await _admitted(request, principal, work))
    except _ClientGone:
        return Response(status_code=CLIENT_CLOSED)


def _answer(result: Any) -> Any:
    if isinstance(result, AsyncIterator):
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    return JSONResponse(result.model_dump())


@router.post("/chat/completions", response_model=ChatCompletionResponse,
             summary="Chat completion (OpenAI-compatible; stream=true for SSE chunks)")
async def chat_completions(request: ChatCompletionRequest, catalog: CatalogDep,
                           principal: PrincipalDep, http: Request, usage: UsageDep) -> Any:
    await _check_readable(catalog, principal, request.model, usage)
    serving = await get_serving(http)
    return await _serve(http, principal, lambda: serving.chat(request))


@router.post("/completions", response_model=CompletionResponse,
             summary="Text completion of a raw prompt (OpenAI-compatible)")
async def completions(request: CompletionRequest, catalog: CatalogDep,
                      principal: PrincipalDep, http: Request, usage: UsageDep) -> Any:
    await _check_readable(catalog, principal, request.model, usage)
    serving = await get_serving(http)
    return await _serve(http, principal, lambda: serving.completion(request))


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
async def classifications(request: ClassificationRequest, catalog: CatalogDep,
                          principal: PrincipalDep, http: Request, usage: UsageDep) -> Any:
    await _check_readable(catalog, principal, request.model, usage)
    serving = await get_serving(http)
    return await _serve(http, principal, lambda: serving.classify(request))
