"""Dependencies injected into routes (shared state from `app.state`)."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request

from gptstore.catalog.access import ANONYMOUS, Principal
from gptstore.catalog.repository import Catalog

_engine_lock = threading.Lock()


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog  # type: ignore[no-any-return]


def get_principal(request: Request) -> Principal:
    """Who is asking. Every caller is ANONYMOUS until accounts exist; accounts will
    authenticate the request here (API key, session) and return its user."""
    return ANONYMOUS


def get_serving(request: Request) -> Any:
    """The OpenAI serving layer, built with its engine on first use (so the server
    starts without importing torch)."""
    state = request.app.state
    if state.serving is None:
        with _engine_lock:
            if state.serving is None:
                from gptstore.api.openai.serving import OpenAIServing
                from gptstore.inference.engine import Engine
                from gptstore.inference.loader import engine_precision, store_resolver
                from gptstore.inference.types import EngineConfig

                settings = state.settings
                precision = engine_precision(settings.inference_dtype)
                config = EngineConfig(base_budget_bytes=settings.max_loaded_bytes,
                                      max_running=settings.max_batch,
                                      max_queue=settings.max_queue, **precision)
                state.engine = Engine(store_resolver(state.catalog, dtype=config.dtype), config)
                state.serving = OpenAIServing(state.engine)
    return state.serving


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
ServingDep = Annotated[Any, Depends(get_serving)]
