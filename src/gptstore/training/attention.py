"""Attention for short sequences: plain matmul-softmax-matmul, with SDPA beyond that.

Why: PyTorch's CPU SDPA (the flash-attention kernel) is built for long sequences; at the
lengths of fine-tuning examples (a sentence: 10-60 tokens) its backward pass is the
slowest op of a LoRA step. Measured on the 2-core reference CPU, one layer of
SmolLM2-135M (9 query / 3 key-value heads, head 64, batch 16), forward + backward, bf16,
one thread:

| tokens | SDPA | matmul-softmax-matmul |
| --- | --- | --- |
| 24 | 16.9 ms | 3.2 ms |
| 64 | 26.2 ms | 10.2 ms |
| 128 | 64.2 ms | 26.7 ms |
| 256 | 138 ms | 124 ms |
| 512 | 506 ms | 839 ms |

So `short_attention` computes attention explicitly up to `SHORT_MAX_TOKENS` query
positions and hands longer ones to transformers' SDPA function. It is registered with
transformers' `AttentionInterface` under `ATTENTION_NAME`, with SDPA's mask function, so
it receives exactly what SDPA would (a boolean mask, or None for "causal, no padding").
The choice is per call, so one model serves short and long batches. It only changes how
attention is computed, never what a saved model is.
"""

from __future__ import annotations

from typing import Any

import torch

ATTENTION_NAME = "gptstore_short"
#: up to this many query positions the explicit form is faster than SDPA here
SHORT_MAX_TOKENS = 192


def short_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                    dropout: float = 0.0, scaling: float | None = None,
                    is_causal: bool | None = None, **kwargs: Any
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention signature: query [B, H, T, D], key/value [B, Hkv, S, D]
    -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    if length > SHORT_MAX_TOKENS or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    kv_heads, kv_length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim ** -0.5
    # 1. scores with grouped query heads: each key/value head serves `group` query heads,
    #    so the queries are regrouped instead of copying keys and values:
    #    [B, Hkv, group*T, D] @ [B, Hkv, D, S] -> [B, H, T, S]
    group = heads // kv_heads
    grouped = query.reshape(batch, kv_heads, group * length, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).view(batch, heads, length, kv_length)
    scores = scores * scale
    # 2. mask: SDPA's boolean mask (True = attend), or None meaning plain causal
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and length > 1:
        attention_mask = torch.ones(length, kv_length, dtype=torch.bool,
                                    device=query.device).tril(kv_length - length)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            # finite fill: a fully masked (padding) row stays finite and gets no gradient
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    # 3. softmax in fp32, dropout, weighted values: [B, H, T, S] -> [B, H, T, D]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0 and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, kv_heads, group * length, kv_length), value)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `ATTENTION_NAME` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, short_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME
