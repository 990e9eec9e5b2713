"""Running models: loading, KV cache, batching scheduler, adapters. No HTTP, no database.

The request types import no torch; `Engine` (which does) is imported on first use, so
`from gptstore.inference import SamplingParams` stays cheap for the API process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gptstore.inference.types import (
    Completion,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    ModelSpec,
    SamplingParams,
    TokenEvent,
    TopLogprob,
    Usage,
)

if TYPE_CHECKING:
    from gptstore.inference.engine import Engine, ServedModelInfo
    from gptstore.inference.handle import RequestHandle

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "FinishReason",
    "GenerationRequest",
    "ModelSpec",
    "RequestHandle",
    "SamplingParams",
    "ServedModelInfo",
    "TokenEvent",
    "TopLogprob",
    "Usage",
]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "ServedModelInfo"):
        from gptstore.inference import engine

        return getattr(engine, name)
    if name == "RequestHandle":
        from gptstore.inference.handle import RequestHandle

        return RequestHandle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
