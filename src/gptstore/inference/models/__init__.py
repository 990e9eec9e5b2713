"""Model runners: hand-written decoders for Llama-family and GPT-2, generic fallback.

`build_runner` picks the fastest runner that reproduces the model exactly.
"""

from __future__ import annotations

from typing import Any

from gptstore.inference.models.base import Head, RowInput, Runner


def build_runner(model: Any, *, max_slots: int, max_context: int | None = None,
                 fast: bool = True) -> Runner:
    """The runner for a loaded `transformers` model (causal LM or sequence classifier)."""
    from gptstore.inference.models import generic, gpt2, llama

    if fast and llama.supports(model):
        return llama.LlamaRunner(model, max_slots=max_slots, max_context=max_context)
    if fast and gpt2.supports(model):
        return gpt2.GPT2Runner(model, max_slots=max_slots, max_context=max_context)
    return generic.GenericRunner(model, max_slots=max_slots, max_context=max_context)


__all__ = ["Head", "RowInput", "Runner", "build_runner"]
