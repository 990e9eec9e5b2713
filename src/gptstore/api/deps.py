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
                from gptstore.inference.store import build_engine

                state.engine = build_engine(state.settings, state.catalog)
                state.serving = OpenAIServing(state.engine)
    return state.serving


#: the owner of everything made without accounts: the single local user
LOCAL_OWNER = "local"


def get_owner(request: Request) -> str:
    """The namespace that owns what the caller creates (files, jobs, fine-tunes) and
    whose files and jobs the caller sees."""
    return LOCAL_OWNER


def get_usage(request: Request) -> Any:
    """The usage counter (`catalog.usage.UsageCounter`) the inference and download routes
    count into; it writes in batches."""
    return request.app.state.usage


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
OwnerDep = Annotated[str, Depends(get_owner)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
ServingDep = Annotated[Any, Depends(get_serving)]
UsageDep = Annotated[Any, Depends(get_usage)]
