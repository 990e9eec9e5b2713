"""Hand-written forward pass for the Llama family (Llama, Mistral, Qwen2, SmolLM2).

Reads the weights of a loaded `transformers` model (`*ForCausalLM` or
`*ForSequenceClassification`) and runs the same maths with fewer, larger operations
(see models/base.py for why): q/k/v fused into one matmul, gate/up fused into one,
residual adds folded into the matmul (models/base.py `Linear`), rotary tables
precomputed for every position once, RMSNorm as one fused LayerNorm (see `rms_norm`).
Where the layer's packed and native copies serve every product, the fused weights
are freed once those are made (`Linear.drop_plain`; 139 MB of SmolLM2's bf16
weights, docs/design.md), and so are the modules' own where the runner is built to
`release_weights` (the engine's: 425 MB of SmolLM2's in fp32); elsewhere the fused
weights replace the model's own parameters (the modules keep views into them), so the
base weights live in memory once beside the copies `Linear` makes.

Numerics follow `transformers` (same rotary tables computed by the model's own rotary
module, same order of operations in the rotation), so fp32 greedy decoding gives the
same tokens as `generate`.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptstore.inference import native
from gptstore.inference.lora import LoraBatch, SiteTarget
from gptstore.inference.models.base import (
    DecoderRunner,
    Head,
    Int4Linear,
    Linear,
    StepPlan,
    copy_allowed,
)
from gptstore.inference.types import (
    ATTENTION_SDPA,
    GEMV_ATEN,
    GEMV_ROWS_ALL,
    INT4_TORCH,
    ROWS_DOT,
)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def supports(model: Any) -> bool:
    """Whether this runner reproduces `model` exactly (else the generic runner serves it)."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") in ("dynamic", "longrope"):
        return False  # tables that change with the sequence length
    if getattr(config, "use_sliding_window", False) and config.model_type == "qwen2":
        return False
    decoder = _decoder(model)
    return decoder is not None and not hasattr(decoder.layers[0].self_attn, "q_norm")


def _decoder(model: Any) -> Any:
    return getattr(model, "model", None)


def rms_norm(x: torch.Tensor, weight2: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as a LayerNorm of [x, -x]: that vector has mean 0 and variance mean(x^2),
    so its first half normalised is x / sqrt(mean(x^2) + eps) (equal to fp32 rounding).

    Why: `F.rms_norm` on a CPU is a composite of ~8 kernels (~12-22 us for one row here);
    `F.layer_norm` is one fused kernel, so cat + layer_norm costs about half. RMSNorm runs
    twice per layer, 61 times per SmolLM2 token. `weight2` is the weight repeated twice.
    """
    d = x.shape[-1]
    return F.layer_norm(torch.cat((x, x.neg()), dim=-1), (2 * d,), weight2, None, eps)[:, :d]


def native_rms_norm(x: torch.Tensor, weight2: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm` in one native call (native.py) for a decode step: the same arguments."""
    return native.rms_norm(x, weight2[:x.shape[-1]], eps)


def silu_mul(gate_up: torch.Tensor, inter: int) -> torch.Tensor:
    """SwiGLU's SiLU(gate) * up of the fused [gate, up] projection."""
    return F.silu(gate_up[:, :inter]) * gate_up[:, inter:]


def _doubled(weight: torch.Tensor) -> torch.Tensor:
    w = weight.detach()
    return torch.cat((w, w)).contiguous()


@dataclass
class _Layer:
    norm1: torch.Tensor  # RMSNorm weights, doubled (see rms_norm)
    qkv: Linear  # D -> (H + 2 KV) hd
    o: Linear  # H hd -> D
    norm2: torch.Tensor  # doubled
    gate_up: Linear  # D -> 2 I
    down: Linear  # I -> D


def _fuse(modules: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of linear layers along their outputs."""
    weight = torch.cat([m.weight.detach() for m in modules], dim=0).contiguous()
    has_bias = [m.bias is not None for m in modules]
    bias = None
    if any(has_bias):
        bias = torch.cat([m.bias.detach() if m.bias is not None
                          else torch.zeros(m.out_features, dtype=weight.dtype)
                          for m in modules]).contiguous()
    return weight, bias


def _share(modules: list[Any], linear: Linear) -> None:
    """Point the modules at views of the fused weights `linear` keeps, so nothing is
    stored twice; where it dropped them (`Linear.drop_plain`) the modules keep their
    own (the checkpoint's file mapping, where the model was loaded in its dtype)."""
    if not linear.holds_plain:
        return
    weight, bias = linear.weight_t.t(), linear.bias
    row = 0
    for m in modules:
        n = m.weight.shape[0]
        m.weight.data = weight[row:row + n]
        if m.bias is not None and bias is not None:
            m.bias.data = bias[row:row + n]
        row += n


class LlamaRunner(DecoderRunner):
    def __init__(self, model: Any, *, max_slots: int, max_context: int | None = None,
                 pack: bool = False, quantize: str | None = None,
                 decode_dtype: torch.dtype | None = None, gemv: str = GEMV_ATEN,
                 gemv_rows: int = 2, rows_loop: str = ROWS_DOT,
                 attention: str = ATTENTION_SDPA, int4_gemv: str = INT4_TORCH,
                 release_weights: bool = False) -> None:
        config = model.config
        decoder = _decoder(model)
        first = decoder.layers[0].self_attn
        n_heads = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = first.head_dim
        context = config.max_position_embeddings
        if getattr(config, "sliding_window", None):
            context = min(context, config.sliding_window)  # exact without window masks
        if max_context:
            context = min(context, max_context)
        dtype = decoder.embed_tokens.weight.dtype
        super().__init__(n_layers=len(decoder.layers), n_heads=n_heads, n_kv_heads=n_kv,
                         head_dim=head_dim, vocab_size=config.vocab_size,
                         context_length=context, dtype=dtype, max_slots=max_slots, pack=pack,
                         quantize=quantize, decode_dtype=decode_dtype, gemv=gemv,
                         gemv_rows=gemv_rows, rows_loop=rows_loop, attention=attention,
                         int4_gemv=int4_gemv, release_weights=release_weights)
        self.eps = float(config.rms_norm_eps)
        self.hidden = config.hidden_size
        self.intermediate = config.intermediate_size
        self.scale = first.scaling
        self.embed = decoder.embed_tokens.weight.detach()
        self.final_norm = _doubled(decoder.norm.weight)
        self.layers: list[_Layer] = []
        for layer in decoder.layers:
            attn, mlp = layer.self_attn, layer.mlp
            fused = [attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]
            qkv, gate_up = (self.linear(w.t(), b, own_copy=True, owners=modules)
                            for modules, (w, b) in zip(fused, map(_fuse, fused),
                                                       strict=True))
            for modules, linear in zip(fused, (qkv, gate_up), strict=True):
                _share(modules, linear)
            self.layers.append(_Layer(
                norm1=_doubled(layer.input_layernorm.weight),
                qkv=qkv,
                o=self.linear(attn.o_proj.weight.detach().t(), _bias(attn.o_proj),
                              owners=[attn.o_proj]),
                norm2=_doubled(layer.post_attention_layernorm.weight),
                gate_up=gate_up,
                down=self.linear(mlp.down_proj.weight.detach().t(), _bias(mlp.down_proj),
                                 owners=[mlp.down_proj]),
            ))
        lm_head = getattr(model, "lm_head", None)
        self.lm_head = None
        if lm_head is not None:
            self.lm_head = Head(self.linear(lm_head.weight.detach().t(), _bias(lm_head)))
        score = getattr(model, "score", None)
        self.score = Head(Linear.of(score.weight.detach(), _bias(score)), lora_site=None) \
            if score is not None else None

        # Rotary tables from the model's own rotary module (so scaled variants like
        # llama3 match), in the model dtype as transformers uses them, grown on demand
        # (a 128k-context model should not pay for 128k positions up front).
        # `sin_signed` folds rotate_half's negation into the table:
        # rotate_half(x) * sin == flip_halves(x) * sin_signed, one op less per layer.
        self._rotary = decoder.rotary_emb
        self.cos = self.sin_signed = torch.empty(0, head_dim, dtype=dtype)
        self._ensure_rotary(min(context, 2048))
        # the layers as one native call, for decode steps of up to `decode_step_rows`
        self.decode_step, self.decode_step_rows = self._decode_step()
        # each adapter's table for that call, while the adapter is loaded
        self._lora_tables: weakref.WeakKeyDictionary[Any, native.LoraTable | None] = \
            weakref.WeakKeyDictionary()

    def _decode_step(self) -> tuple[native.LlamaDecodeStep | None, int]:
        """The layers as one native call (`native.LlamaDecodeStep`) where every product
        of every layer runs on one native kernel and the attention on the native one
        (the same kernels the step would call one by one), and the most rows of a step
        it takes: what the products' kernel serves (`gemv_rows` for the bf16 GEMV; for
        the 4-bit one 1-2, or any with the int4 kernel "native-all")."""
        if not self.native_attention or not self.layers:
            return None, 0
        kinds, layers, most = set(), [], []
        for w in self.layers:
            parts: list[torch.Tensor | None] = [w.norm1[:self.hidden]]
            for linear in (w.qkv, w.o, w.gate_up, w.down):
                if isinstance(linear, Int4Linear):
                    # 1-2 rows with the int4 kernel "native", every step with "native-all"
                    weights, kind = linear.decode_q4, "q4"
                    rows = linear.q4_max_rows or GEMV_ROWS_ALL
                else:
                    weights, rows = linear.decode_native, linear.native_rows
                    kind = "native-avx512" if linear.native_avx512 else "native"
                if weights is None:
                    return None, 0  # a product on PyTorch's kernels
                kinds.add(kind)
                most.append(rows)
                parts += [weights, linear.bias]
                if linear is w.o:
                    parts.append(w.norm2[:self.hidden])
            layers.append(parts)
        if len(kinds) != 1:
            return None, 0
        step = native.LlamaDecodeStep(layers, kinds.pop(), dim=self.hidden,
                                      n_heads=self.n_heads, n_kv=self.n_kv_heads,
                                      head_dim=self.head_dim, inter=self.intermediate,
                                      eps=self.eps, scale=self.scale, dtype=self.dtype,
                                      rows_loop=self.rows_loop)
        return step, min(most)

    def _lora_tables_of(self, lora: LoraBatch, n: int
                        ) -> list[native.LoraTable | None] | None:
        """Per row of a step of `n` one-token rows, the native step's table of its adapter
        (None for a row without one), each built on first use; None where an adapter
        does not fit the native step (models/lora.py applies it then, between separate
        calls)."""
        tables: list[native.LoraTable | None] = [None] * n
        for adapter, selector in lora.token_groups:
            if adapter not in self._lora_tables:
                try:
                    built: native.LoraTable | None = native.LoraTable(
                        adapter.sites, len(self.layers), self.dtype)
                except ValueError:
                    built = None
                self._lora_tables[adapter] = built
            table = self._lora_tables[adapter]
            if table is None:
                return None
            rows = range(n)[selector] if isinstance(selector, slice) else selector.tolist()
            for row in rows:
                tables[row] = table
        return tables

    def _ensure_rotary(self, n_positions: int) -> None:
        if n_positions <= self.cos.shape[0]:
            return
        n = min(self.context_length, max(n_positions, 2 * self.cos.shape[0]))
        with torch.inference_mode():
            cos, sin = self._rotary(torch.zeros(1, dtype=self.dtype), torch.arange(n)[None])
        half = self.head_dim // 2
        self.cos = cos[0].contiguous()  # [n, hd]
        self.sin_signed = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).contiguous()

    def default_head(self) -> Head:
        head = self.lm_head or self.score
        assert head is not None
        return head

    def site_of(self, module: str) -> SiteTarget | None:
        if re.fullmatch(r"(.*\.)?lm_head", module):
            return SiteTarget(-1, "lm_head", 0, self.vocab_size, self.vocab_size)
        match = re.fullmatch(r"(?:.*\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)", module)
        if not match:
            return None
        layer, name = int(match[1]), match[2]
        hd = self.head_dim
        q, kv = self.n_heads * hd, self.n_kv_heads * hd
        qkv_total, gu_total = q + 2 * kv, 2 * self.intermediate
        table = {
            "q_proj": ("qkv", 0, q, qkv_total), "k_proj": ("qkv", q, kv, qkv_total),
            "v_proj": ("qkv", q + kv, kv, qkv_total), "o_proj": ("o", 0, self.hidden, self.hidden),
            "gate_proj": ("gate_up", 0, self.intermediate, gu_total),
            "up_proj": ("gate_up", self.intermediate, self.intermediate, gu_total),
            "down_proj": ("down", 0, self.hidden, self.hidden),
        }
        if name not in table or layer >= self.n_layers:
            return None
        site, offset, width, total = table[name]
        return SiteTarget(layer, site, offset, width, total)

    def hidden_states(self, plan: StepPlan, lora: LoraBatch | None) -> torch.Tensor:
        n, hd = plan.n_tokens, self.head_dim
        n_q, n_kv, inter, eps = self.n_heads, self.n_kv_heads, self.intermediate, self.eps
        # (its products run on the bf16 copy of fp32 weights: not in an exact step)
        attention = None
        if self.decode_step is not None and n <= self.decode_step_rows \
                and copy_allowed(self.dtype):
            if plan.kernel_writes and len(plan.groups) == 1:  # decode rows, consecutive slots
                attention = plan.groups[0].native
            else:  # decode rows on any slots, short prompt chunks beside them
                attention = self.step_attention(plan)
        if attention is not None:
            # every layer in one native call, with each row's adapter where the rows have
            # any
            tables = self._lora_tables_of(lora, n) if lora is not None else None
            if lora is None or tables is not None:
                self._ensure_rotary(plan.max_position)
                x = F.embedding(plan.token_ids, self.embed)  # [N, D], updated in place
                self.decode_step(x, self.kv.k, self.kv.v, attention,
                                 (self.cos, self.sin_signed), tables)
                if len(plan.last_index) == 0:
                    return x[plan.last_index]  # a prompt chunk wanting no logits
                return native_rms_norm(x[plan.last_index], self.final_norm, eps)
        # steps of decode rows (or 1-2 tokens) where the native decode kernels measured
        # faster (`native_attention`): RMSNorm and SiLU * up in one native call each
        small = self.native_attention and (n <= native.MAX_ROWS or plan.kernel_writes)
        norm = native_rms_norm if small else rms_norm
        swiglu = native.silu_mul if small else silu_mul
        q_width, qk_width = n_q * hd, (n_q + n_kv) * hd
        self._ensure_rotary(plan.max_position)
        # in a step of native decode attention only, the kernel rotates q and k itself
        rotary = (self.cos, self.sin_signed) if plan.kernel_writes else None
        if rotary is None:  # each row's position, [N, 1, hd], shared by all layers
            cos = self.cos[plan.positions][:, None, :]
            sin = self.sin_signed[plan.positions][:, None, :]
        x = F.embedding(plan.token_ids, self.embed)  # [N, D]
        last, top = plan.last_index, len(self.layers) - 1
        outputs_only = False  # whether x holds only the rows whose logits are wanted
        for i, w in enumerate(self.layers):
            # attention block
            h = norm(x, w.norm1, eps)
            qkv = w.qkv(h)  # [N, (H + 2 KV) hd]
            if lora is not None:
                lora.apply(i, "qkv", h, qkv)
            v = qkv[:, qk_width:].view(n, n_kv, hd)
            if rotary is not None:
                attn = self.attend(plan, i, qkv[:, :q_width].view(n, n_q, hd),
                                   qkv[:, q_width:qk_width].view(n, n_kv, hd), v,
                                   self.scale, rotary)
            else:
                qk = qkv[:, :qk_width].view(n, n_q + n_kv, hd)  # q and k rotated together
                swapped = qk.unflatten(-1, (2, hd // 2)).flip(-2).flatten(-2)
                qk = torch.addcmul(qk * cos, swapped, sin)  # q * cos + rotate_half(q) * sin
                attn = self.attend(plan, i, qk[:, :n_q], qk[:, n_q:], v, self.scale)
            if i == top and len(last) < n:
                # the top layer's keys and values are cached: past its attention only
                # the rows whose logits are wanted count (a prompt read for its last
                # token skips ~84% of the layer's products), with each row's adapter
                if len(last) == 0:
                    return x[last]  # a prompt chunk wanting no logits
                x, attn, outputs_only = x[last], attn[last], True
            x = w.o(attn, residual=x)
            if lora is not None:
                lora.apply(i, "o", attn, x, rows=outputs_only)
            # MLP block
            h = norm(x, w.norm2, eps)
            gate_up = w.gate_up(h)  # [N, 2 I]
            if lora is not None:
                lora.apply(i, "gate_up", h, gate_up, rows=outputs_only)
            act = swiglu(gate_up, inter)
            x = w.down(act, residual=x)
            if lora is not None:
                lora.apply(i, "down", act, x, rows=outputs_only)
        if not outputs_only:
            x = x[last]
        return norm(x, self.final_norm, eps)


def _bias(module: Any) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach()

