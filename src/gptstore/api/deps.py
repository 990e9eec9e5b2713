"""Dependencies injected into routes (shared state from `app.state`)."""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import Depends, Request

from gptstore.api.auth import LOCAL_OWNER, read_owner, read_principal, write_owner
from gptstore.catalog.access import Principal
from gptstore.catalog.repository import Catalog

_engine_lock = threading.Lock()


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog  # type: ignore[no-any-return]


def get_principal(request: Request) -> Principal:
    """Who is asking, for a read (api/auth.py: the key, the mode, the rate limit)."""
    return read_principal(request)


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
                state.serving = OpenAIServing(state.engine,
                                              max_tokens=state.settings.max_tokens)
    return state.serving


def get_owner(request: Request) -> str:
    """The namespace whose files and jobs the caller sees (a read)."""
    return read_owner(request)


def get_write_owner(request: Request) -> str:
    """The namespace that owns what the caller creates or changes (a write)."""
    return write_owner(request)


__all__ = ["LOCAL_OWNER"]


def get_usage(request: Request) -> Any:
    """The usage counter (`catalog.usage.UsageCounter`) the inference and download routes
    count into; it writes in batches."""
    return request.app.state.usage


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
OwnerDep = Annotated[str, Depends(get_owner)]
WriteOwnerDep = Annotated[str, Depends(get_write_owner)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
ServingDep = Annotated[Any, Depends(get_serving)]
UsageDep = Annotated[Any, Depends(get_usage)]
