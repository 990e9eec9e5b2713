"""Hand-written forward pass for GPT-2 (`GPT2LMHeadModel`, `GPT2ForSequenceClassification`).

Same scheme as the Llama runner (models/base.py says why): one flattened batch, the
model's own fused `c_attn` q/k/v matmul, the slot KV cache. GPT-2's `Conv1D` weights are
stored `[in, out]`; we use them as they are with `addmm(bias, x, W)`, exactly the
operation `transformers` runs, so no weight is copied or transposed and fp32 greedy
decoding matches `generate` token for token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptstore.inference.lora import LoraBatch, SiteTarget
from gptstore.inference.models.base import DecoderRunner, Head, Linear, StepPlan
from gptstore.inference.types import ATTENTION_SDPA, GEMV_ATEN, INT4_TORCH, ROWS_DOT

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def supports(model: Any) -> bool:
    config = model.config
    if config.model_type != "gpt2" or getattr(model, "transformer", None) is None:
        return False
    return not getattr(config, "add_cross_attention", False)


@dataclass
class _Layer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    attn: Linear  # D -> 3D (Conv1D weight [in, out] used as it is)
    proj: Linear  # D -> D
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc: Linear  # D -> I
    out: Linear  # I -> D
    scale: float


class GPT2Runner(DecoderRunner):
    def __init__(self, model: Any, *, max_slots: int, max_context: int | None = None,
                 pack: bool = False, quantize: str | None = None,
                 decode_dtype: torch.dtype | None = None, gemv: str = GEMV_ATEN,
                 gemv_rows: int = 2, rows_loop: str = ROWS_DOT,
                 attention: str = ATTENTION_SDPA, int4_gemv: str = INT4_TORCH,
                 release_weights: bool = False) -> None:
        config = model.config
        tr = model.transformer
        d, n_heads = config.n_embd, config.n_head
        context = config.n_positions
        if max_context:
            context = min(context, max_context)
        dtype = tr.wte.weight.dtype
        super().__init__(n_layers=len(tr.h), n_heads=n_heads, n_kv_heads=n_heads,
                         head_dim=d // n_heads, vocab_size=config.vocab_size,
                         context_length=context, dtype=dtype, max_slots=max_slots, pack=pack,
                         quantize=quantize, decode_dtype=decode_dtype, gemv=gemv,
                         gemv_rows=gemv_rows, rows_loop=rows_loop, attention=attention,
                         int4_gemv=int4_gemv, release_weights=release_weights)
        self.hidden = d
        self.eps = float(config.layer_norm_epsilon)
        self.wte = tr.wte.weight.detach()
        self.wpe = tr.wpe.weight.detach()
        self.ln_f = (tr.ln_f.weight.detach(), tr.ln_f.bias.detach())
        act_name = config.activation_function
        if act_name in _TANH_GELUS:
            self.act: Any = lambda t: F.gelu(t, approximate="tanh")
        else:
            from transformers.activations import ACT2FN

            self.act = ACT2FN[act_name]
        self.layers: list[_Layer] = []
        for i, block in enumerate(tr.h):
            scale = 1.0
            if config.scale_attn_weights:
                scale /= (d // n_heads) ** 0.5
            if config.scale_attn_by_inverse_layer_idx:
                scale /= float(i + 1)
            self.layers.append(_Layer(
                ln1_w=block.ln_1.weight.detach(), ln1_b=block.ln_1.bias.detach(),
                attn=self._conv1d(block.attn.c_attn), proj=self._conv1d(block.attn.c_proj),
                ln2_w=block.ln_2.weight.detach(), ln2_b=block.ln_2.bias.detach(),
                fc=self._conv1d(block.mlp.c_fc), out=self._conv1d(block.mlp.c_proj),
                scale=scale,
            ))
        self.intermediate = self.layers[0].fc.weight_t.shape[1]
        lm_head = getattr(model, "lm_head", None)
        self.lm_head = Head(self.linear(lm_head.weight.detach().t())) \
            if lm_head is not None else None
        score = getattr(model, "score", None)
        self.score = Head(Linear.of(score.weight.detach(), None if score.bias is None
                                    else score.bias.detach()), lora_site=None) \
            if score is not None else None

    def _conv1d(self, module: Any) -> Linear:
        return self.linear(module.weight.detach(), module.bias.detach(), owners=[module])

    def default_head(self) -> Head:
        head = self.lm_head or self.score
        assert head is not None
        return head

    def site_of(self, module: str) -> SiteTarget | None:
        if re.fullmatch(r"(.*\.)?lm_head", module):
            return SiteTarget(-1, "lm_head", 0, self.vocab_size, self.vocab_size)
        match = re.fullmatch(r"(?:.*\.)?h\.(\d+)\.(attn|mlp)\.(c_attn|c_proj|c_fc)", module)
        if not match or int(match[1]) >= self.n_layers:
            return None
        d = self.hidden
        site, width = {
            ("attn", "c_attn"): ("qkv", 3 * d), ("attn", "c_proj"): ("o", d),
            ("mlp", "c_fc"): ("up", self.intermediate), ("mlp", "c_proj"): ("down", d),
        }[(match[2], match[3])]
        return SiteTarget(int(match[1]), site, 0, width, width)

    def hidden_states(self, plan: StepPlan, lora: LoraBatch | None) -> torch.Tensor:
        n, d, hd, n_heads, eps = plan.n_tokens, self.hidden, self.head_dim, self.n_heads, self.eps
        x = F.embedding(plan.token_ids, self.wte) + F.embedding(plan.positions, self.wpe)
        last, top = plan.last_index, len(self.layers) - 1
        outputs_only = False  # whether x holds only the rows whose logits are wanted
        for i, w in enumerate(self.layers):
            h = F.layer_norm(x, (d,), w.ln1_w, w.ln1_b, eps)
            qkv = w.attn(h)  # [N, 3D]
            if lora is not None:
                lora.apply(i, "qkv", h, qkv)
            q = qkv[:, :d].view(n, n_heads, hd)
            k = qkv[:, d:2 * d].view(n, n_heads, hd)
            v = qkv[:, 2 * d:].view(n, n_heads, hd)
            attn = self.attend(plan, i, q, k, v, w.scale)
            if i == top and len(last) < n:  # as in the Llama runner
                if len(last) == 0:
                    return x[last]
                x, attn, outputs_only = x[last], attn[last], True
            out = w.proj(attn)
            if lora is not None:
                lora.apply(i, "o", attn, out, rows=outputs_only)
            x = x + out
            h = F.layer_norm(x, (d,), w.ln2_w, w.ln2_b, eps)
            f = w.fc(h)
            if lora is not None:
                lora.apply(i, "up", h, f, rows=outputs_only)
            f = self.act(f)
            out = w.out(f)
            if lora is not None:
                lora.apply(i, "down", f, out, rows=outputs_only)
            x = x + out
        if not outputs_only:
            x = x[last]
        return F.layer_norm(x, (d,), self.ln_f[0], self.ln_f[1], eps)
