"""Model runners: hand-written decoders for Llama-family and GPT-2, generic fallback.

`build_runner` picks the fastest runner that reproduces the model exactly.
"""

from __future__ import annotations

from typing import Any

from gptstore.inference.models.base import Head, Int4Linear, Linear, RowInput, Runner
from gptstore.inference.types import ATTENTION_SDPA, GEMV_ATEN, INT4_TORCH, ROWS_DOT


def build_runner(model: Any, *, max_slots: int, max_context: int | None = None,
                 fast: bool = True, pack: bool = True, quantize: str | None = None,
                 decode_dtype: Any = None, gemv: str = GEMV_ATEN, gemv_rows: int = 2,
                 rows_loop: str = ROWS_DOT, attention: str = ATTENTION_SDPA,
                 int4_gemv: str = INT4_TORCH, release_weights: bool = False) -> Runner:
    """The runner for a loaded `transformers` model (causal LM or sequence classifier).

    `pack`: keep a oneDNN-packed copy of the weights for batched steps (models/base.py
    `Linear`): 1.2-1.9x faster batches for twice the weight memory. `quantize="int4"`:
    4-bit projection weights (`Int4Linear`; the model must be bf16); the generic runner
    does not quantize. `decode_dtype=torch.bfloat16` with an fp32 model: steps of 1-2
    rows run on a bf16 copy of the projections (models/base.py `Linear`); the generic
    runner ignores it. `gemv`: the kernel of bf16 1-2 row products, "aten" or "onednn"
    (packed weights) or "native", as measured on this CPU (precision.py,
    `MachineProfile.gemv`); `gemv_rows`: the most rows of a step the native one serves
    (`MachineProfile.gemv_rows`), on the loop `rows_loop` ("bf16-dot" or "fma",
    `MachineProfile.rows_loop`). `attention`: the kernel of decode rows' attention, "sdpa"
    or "native" (`MachineProfile.attention`); `int4_gemv`: the kernel of 4-bit products,
    "torch", "native" or "native-all" (`MachineProfile.int4_gemv`); the generic runner
    ignores all of these.
    """
    from gptstore.inference.models import generic, gpt2, llama

    if fast and llama.supports(model):
        return llama.LlamaRunner(model, max_slots=max_slots, max_context=max_context,
                                 pack=pack, quantize=quantize, decode_dtype=decode_dtype,
                                 gemv=gemv, gemv_rows=gemv_rows, rows_loop=rows_loop,
                                 attention=attention, int4_gemv=int4_gemv,
                                 release_weights=release_weights)
    if fast and gpt2.supports(model):
        return gpt2.GPT2Runner(model, max_slots=max_slots, max_context=max_context, pack=pack,
                               quantize=quantize, decode_dtype=decode_dtype, gemv=gemv,
                               gemv_rows=gemv_rows, rows_loop=rows_loop, attention=attention,
                               int4_gemv=int4_gemv, release_weights=release_weights)
    return generic.GenericRunner(model, max_slots=max_slots, max_context=max_context)


__all__ = ["Head", "Int4Linear", "Linear", "RowInput", "Runner", "build_runner"]
