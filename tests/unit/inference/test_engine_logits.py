"""bf16 logits: the top candidates are recomputed in fp32 (models/base._refine_top)."""

from __future__ import annotations

import torch

from gptstore.inference.models.base import Linear, _refine_top


def test_top_logits_equal_an_fp32_head_and_break_bf16_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(5000, 64, generator=gen) * 0.5).to(torch.bfloat16)
    hidden = torch.randn(3, 64, generator=gen).to(torch.bfloat16)
    linear = Linear.of(weight)
    bf16 = linear(hidden)
    exact = hidden.float() @ weight.float().t()
    refined = _refine_top(bf16, hidden, linear, k=16)
    top = exact.topk(16, dim=-1).indices
    # equal up to fp32 summation order
    assert torch.allclose(refined.gather(-1, top), exact.gather(-1, top), atol=1e-5, rtol=0)
    assert torch.equal(refined.argmax(-1), exact.argmax(-1))
    # the bf16 values alone are coarser: many exact ties that fp32 separates
    assert (bf16.float().gather(-1, top) - exact.gather(-1, top)).abs().max() > 1e-3


def test_small_heads_are_computed_in_fp32_entirely() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 32, generator=gen).to(torch.bfloat16)
    bias = torch.randn(3, generator=gen).to(torch.bfloat16)
    hidden = torch.randn(2, 32, generator=gen).to(torch.bfloat16)
    linear = Linear.of(weight, bias)
    out = _refine_top(linear(hidden), hidden, linear)
    expected = hidden.float() @ weight.float().t() + bias.float()
    assert torch.allclose(out, expected, atol=1e-6)
