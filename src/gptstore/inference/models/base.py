"""What every model runner offers the scheduler, and the shared parts of our decoders.

A *runner* executes one batched forward step over many sequences: `forward(rows)`,
where each row is a sequence's slot in the KV cache plus the tokens to run through the
model this step (the whole or a chunk of the prompt for a newcomer, one token for a
decoding sequence). It returns the logits at the last token of the rows that asked.

`DecoderRunner` is the base of our hand-written decoders (Llama family, GPT-2). Why
hand-written: on a CPU the per-token cost of `transformers` `generate` is framework
overhead (module calls, cache objects, mask building, logits processors: ~50 ms per
token for a 135M model), not arithmetic. Our step flattens the batch's tokens into one
`[N, hidden]` matrix so each projection is one matmul for all sequences (prefill and
decode mixed), fuses q/k/v and gate/up into single matmuls, keeps keys/values in a
slot cache (kv_cache.py), and builds masks and rotary tables once per step, not per
layer. Attention is the only per-sequence part: decoding rows on consecutive slots
share one `scaled_dot_product_attention` call; a prompt chunk gets its own causal call.

Knows nothing of sampling, requests or adapters' storage.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptstore.inference import native
from gptstore.inference.kv_cache import Slot, SlotKVCache
from gptstore.inference.lora import LoraBatch, SiteTarget
from gptstore.inference.prefix_cache import PrefixBlock, PrefixCache, ScoresReader
from gptstore.inference.types import (
    ATTENTION_NATIVE,
    ATTENTION_SDPA,
    GEMV_ATEN,
    GEMV_DECODE_ROWS,
    GEMV_KERNELS,
    GEMV_NATIVE,
    GEMV_NATIVE_AVX512,
    GEMV_ONEDNN,
    GEMV_ROWS_ALL,
    INT4_KERNELS,
    INT4_NATIVE_ALL,
    INT4_TORCH,
    ROWS_DOT,
    ROWS_LOOPS,
)


@dataclass
class RowInput:
    """One sequence's part of a step."""

    slot: Slot | None  # None: no cache (classification, one-shot)
    token_ids: list[int]  # tokens to run now; their positions start at `start`
    start: int
    want_logits: bool = True  # the last token's logits (the next token is sampled)
    # the logits of every token of the row, in order (scoring a prompt); the row's
    # outputs are then len(token_ids) rows, the last one serving `want_logits` too
    all_logits: bool = False

    @property
    def n_outputs(self) -> int:
        """Rows of logits this row adds to a step's output."""
        return len(self.token_ids) if self.all_logits else int(self.want_logits)


_GEMV_MAX_ROWS = 2  # up to this many rows a bf16 matmul is a matrix-vector product
#: a prompt chunk after a cached prefix of at most this many tokens (a scored
#: continuation, a short reply) attends on the native kernel (`native_attention`), one
#: decode row per token, rather than in SDPA with a mask. SmolLM2's heads, bf16, two
#: threads, Zen 4 EPYC (scratch `chunkattn.py`), SDPA / native: 2 rows after 1,000
#: cached positions 192 / 62 us, 8 rows 275 / 224 us, 18 rows 472 / 498 us (each row
#: reads every key again, where SDPA's blocks share them)
CHUNK_NATIVE_ROWS = 8
#: the longest prompt chunk a step may hold and still run in a Llama runner's one native
#: call beside decode rows (`DecoderRunner.step_attention`; the step's rows must also be
#: within the call's `decode_step_rows`). The call attends each token as a row of its
#: own, reading its keys again where SDPA's blocks share them, so long chunks stay on
#: the separate calls (see docs/design.md, "Prefix caching and paced chunked prefill").
ONE_CALL_CHUNK_TOKENS = 64
REFINE_TOP = 32  # bf16 logits: the top candidates recomputed in fp32 (see _refine_top)

#: True during a step that scores a prompt (`RowInput.all_logits`) or classifies texts
#: (`exact_products`): its products keep the weights' own precision, not a
#: lower-precision decode copy (`Linear`). A decode copy is a speed choice for
#: generating, where a step's few rows only pick the next token; a score or a class
#: probability is a figure a caller compares (lm-evaluation-harness against
#: transformers), and on an fp32-served model it must not depend on how many rows its
#: step had.
_EXACT_STEP: contextvars.ContextVar[bool] = contextvars.ContextVar("exact_step",
                                                                   default=False)


@contextlib.contextmanager
def exact_products() -> Iterator[None]:
    """Steps run in here keep the weights' own precision (see `_EXACT_STEP`)."""
    token = _EXACT_STEP.set(True)
    try:
        yield
    finally:
        _EXACT_STEP.reset(token)


def exact_step() -> bool:
    """Whether the step running now keeps the weights' own precision."""
    return _EXACT_STEP.get()


def _exact_in_bf16(weight: torch.Tensor) -> bool:
    """Whether every value of `weight` is a bf16 value (a bf16 copy loses nothing)."""
    return torch.equal(weight.to(torch.bfloat16).to(weight.dtype), weight)


def copy_allowed(weights: torch.dtype) -> bool:
    """Whether products of weights of dtype `weights` may run on their bf16 copy now:
    always for bf16 weights (the copy holds the same values, in another layout), for
    fp32 weights only outside an exact step."""
    return weights == torch.bfloat16 or not exact_step()


@functools.cache
def can_pack(dtype: torch.dtype) -> bool:
    """Whether oneDNN can hold weights of `dtype` in its blocked layout on this CPU.

    Not on every x86 CPU: its bf16 path needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, and
    an AVX2-only EPYC refuses it. Asked of oneDNN itself with a tiny weight rather than
    read from CPU flags, so a CPU (or a torch) we have not seen answers for itself; a
    refusal leaves the weights unpacked, served by the plain matmul."""
    if dtype not in (torch.bfloat16, torch.float32) or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), None)
    except RuntimeError:
        return False
    return True


class Linear:
    """`x @ W^T + b` (optionally `+ residual`) with the fastest CPU kernel for the rows.

    Measured (torch 2.13, 2 cores):

    * 1-2 rows (single-stream decode): a plain matmul (MKL's GEMV in fp32). In bf16,
      ATen's own GEMV reads weights at ~28 GB/s where oneDNN, which PyTorch picks for bf16
      whenever it is enabled, manages ~11 GB/s; so for these calls oneDNN is switched
      off around the matmul (the flag is process-global; other threads' matmuls
      meanwhile take ATen's path too, which is still correct).
    * 3+ rows in bf16, 4+ in fp32 (batched decode, prefill): oneDNN on weights
      reordered once into its blocked layout (`_reorder_linear_weight`), with the
      residual add fused. bf16 on an AMX machine: a plain `F.linear` reorders the
      weight on every call and is 1.4-1.9x slower at 3-512 rows. fp32 without AMX:
      all of SmolLM2's projections at 16 rows took 39 ms against 48 ms for MKL's `mm`.
      The packed copy doubles the memory of the weights; `pack=False` skips it.
    * `gemv="onednn"`: bf16 1-2 row products on the packed weights too, where this CPU
      measured that faster than ATen's GEMV (precision.py, `MachineProfile.gemv`). On
      an AMX Sapphire Rapids, all of SmolLM2's projections at one row, two threads:
      ATen's GEMV 21 ms a pass (10 GB/s of weights), packed oneDNN 13 ms (16 GB/s);
      single-stream decoding went from 33-35 to 46-49 tok/s. On the machine the rule
      above was measured on, the reverse held: so it is measured, not assumed.
    * `decode_dtype=torch.bfloat16` on fp32 weights: a bf16 copy serves the 1-2 row
      steps (ATen's GEMV, fp32 out), where the CPU measured bf16 faster for them but
      fp32 faster for batches (precision.py, "decode" vs "batched"). On an AVX2-only
      EPYC: fp32 GEMV read 8-15 GB/s of weights, the bf16 copy 18-25 GB/s in fp32
      terms, while bf16 batches ran at a quarter of fp32's speed (no bf16 arithmetic).
      The copy costs half the fp32 weights' memory.
    * `gemv="native"`: 1-2 row products in gptstore's own bf16 GEMV (native.py) on a
      copy of the weights in the layout it reads sequentially, where this CPU measured
      it fastest. On an AVX2 EPYC (Zen 3), all of SmolLM2's projections at one row, two
      threads: ATen's bf16 GEMV streamed 9-14 GB/s of weights, the native kernel
      14-22 GB/s. For fp32 weights it takes the decode copy's place (same bytes); for
      bf16 weights it is a copy of its own. Layers it cannot take (an input width not
      a multiple of 16) keep ATen's GEMV.
    * `gemv="native-avx512"`: the same kernel on its AVX-512 path, with the same bits
      (gemv_bf16.c), where the CPU has AVX-512 and it measured faster. On an AMX
      Sapphire Rapids VM, 270 MB of weights at one row, two threads: 17 GB/s on the
      AVX2 path, 20 GB/s on this one (the machine streams ~27 GB/s).
    * `gemv_rows`: the native kernel also serves steps of up to that many rows, where
      the machine measured it no slower than the batched products
      (`MachineProfile.gemv_rows`): such a step is still a pass over every weight, and
      on a CPU that serves fp32 the bf16 copy halves its bytes. On an AVX2 EPYC the
      engine decoding 4 streams went from 98-103 to 156-184 tok/s with it, 16 streams
      from 196-207 to 250-269 (alternating scratch runs). For fp32 weights the copy
      serves steps of more than `GEMV_DECODE_ROWS` rows (a prompt chunk beside decode
      rows) only where every weight is a bf16 value, so its products are the fp32 ones.
    * `rows_loop`: the native kernel's loop for those steps of several rows on an AVX-512
      CPU, the bf16 dot product or FMAs on widened weights (the same bits), or AMX tiles,
      as measured (`MachineProfile.rows_loop`). On an Intel Xeon without AMX, whose
      `vdpbf16ps` issues at a quarter of an FMA's rate, SmolLM2's 16-row forward took
      30-32 ms on the FMAs against 35-36 on the dot product (medians, alternating in one
      process).
    """

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None = None, *,
                 pack: bool = False, decode_dtype: torch.dtype | None = None,
                 gemv: str = GEMV_ATEN, gemv_rows: int = _GEMV_MAX_ROWS,
                 rows_loop: str = ROWS_DOT) -> None:
        if gemv not in GEMV_KERNELS:
            raise ValueError(f"unknown gemv kernel {gemv!r} (known: {', '.join(GEMV_KERNELS)})")
        if rows_loop not in ROWS_LOOPS:
            raise ValueError(f"unknown rows loop {rows_loop!r} (known: "
                             f"{', '.join(ROWS_LOOPS)})")
        self.weight_t = weight_t  # [in, out]: a transposed view of an nn.Linear weight,
        self.bias = bias  # or a GPT-2 Conv1D weight as it is
        mkldnn = torch.backends.mkldnn.is_available()
        bf16 = weight_t.dtype == torch.bfloat16
        # gptstore's GEMV for 1-2 rows, on bf16 weights or as an fp32 model's decode copy
        self.decode_native: torch.Tensor | None = None
        if gemv in (GEMV_NATIVE, GEMV_NATIVE_AVX512) \
                and (bf16 or decode_dtype == torch.bfloat16) \
                and native.fits(weight_t.shape[0]) and native.library() is not None:
            self.decode_native = native.pack(weight_t.t())
        self.native_avx512 = gemv == GEMV_NATIVE_AVX512 and native.gemv_avx512_supported()
        # the most rows the native kernel serves: 1-2 always, more where measured faster,
        # and their loop; on an fp32 model's bf16 copy, steps past the decode steps only
        # where the copy holds the weights exactly (a bf16 checkpoint loaded in fp32, as
        # SmolLM2's is): its products are then the fp32 ones but for the order of the adds
        self.native_rows = max(gemv_rows, _GEMV_MAX_ROWS)
        if not bf16 and self.decode_native is not None and \
                self.native_rows > GEMV_DECODE_ROWS and not _exact_in_bf16(weight_t):
            self.native_rows = GEMV_DECODE_ROWS
        self.rows_loop = rows_loop
        self.packed = None  # not where the native kernel serves every product
        if pack and can_pack(weight_t.dtype) and not self.native_serves_all:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight_t.t(), None)
        # bf16 1-2 row products on the packed weights (`gemv="onednn"`), else ATen's GEMV
        packed_gemv = gemv == GEMV_ONEDNN and bf16 and self.packed is not None
        self.gemv_toggle = bf16 and mkldnn and not packed_gemv
        # fp32 at 3 rows: MKL 23.5 ms vs packed oneDNN 25.9 (all projections); 4: 35 vs 27
        self.packed_min_rows = 1 if packed_gemv else \
            _GEMV_MAX_ROWS + (1 if self.gemv_toggle else 2)
        if not bf16 and self.decode_native is not None and self.packed is not None:
            # fp32 weights whose bf16 native copy serves the generated tokens' steps: the
            # packed copy serves every other one, exact steps of 1-3 rows (a scored
            # continuation, a classified word) included, so the plain weights serve none
            # and may go (`plain_needed`): a third of the memory of the weights and their
            # copies. Those steps are rare, and not slower there: the AVX2 EPYC where
            # such copies are made, all of SmolLM2's projections at 1 / 3 rows, two
            # threads, MKL 54 / 109 ms against packed oneDNN 24 / 20 ms (one thread, 1
            # row: MKL 1.15x faster), scratch `mm2.py`
            self.packed_min_rows = 1
        self.decode_weight_t: torch.Tensor | None = None
        self.decode_packed: torch.Tensor | None = None
        if decode_dtype is not None and decode_dtype != weight_t.dtype \
                and self.decode_native is None:
            copy = weight_t.to(decode_dtype)  # keeps the [in, out] strides
            if gemv == GEMV_ONEDNN and can_pack(decode_dtype):
                self.decode_packed = torch.ops.mkldnn._reorder_linear_weight(copy.t(), None)
            else:
                self.decode_weight_t = copy

    @property
    def native_serves_all(self) -> bool:
        """Whether the native kernel serves every product of these weights (bf16 weights
        with `gemv_rows` at `GEMV_ROWS_ALL`): no packed copy is made then, and the plain
        weights go where the runner drops them."""
        return self.weight_t.dtype == torch.bfloat16 and self.decode_native is not None \
            and self.native_rows >= GEMV_ROWS_ALL

    @property
    def plain_needed(self) -> bool:
        """Whether some product may still run on `weight_t` itself. Not where the packed
        copy serves every step it is asked to (`gemv="onednn"` for bf16 weights; fp32
        weights with a native decode copy), nor for bf16 weights whose packed copy serves
        every step of 3+ rows while the native kernel serves the 1-2 row steps
        (`copy_allowed`: those copies hold the same values), nor where the native kernel
        serves them all."""
        if self.native_serves_all:
            return False
        if self.packed is None:
            return True
        if self.packed_min_rows == 1:
            return False
        if self.weight_t.dtype != torch.bfloat16:
            return True
        return self.decode_native is None or self.packed_min_rows > self.native_rows + 1

    def drop_plain(self) -> None:
        """Free `weight_t` where no product reads it (`plain_needed`): for a copy made
        for this layer alone (a runner's fused q/k/v or gate/up), whose memory would
        otherwise sit beside the packed and native copies unread. What stays is a tensor
        without storage of the same shape, strides and dtype."""
        if not self.plain_needed:
            w = self.weight_t
            self.weight_t = torch.empty_strided(w.shape, w.stride(), dtype=w.dtype,
                                                device="meta")

    @property
    def holds_plain(self) -> bool:
        return not self.weight_t.is_meta

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           pack: bool = False, decode_dtype: torch.dtype | None = None,
           gemv: str = GEMV_ATEN, gemv_rows: int = _GEMV_MAX_ROWS,
           rows_loop: str = ROWS_DOT) -> Linear:
        """From an `nn.Linear`-style weight [out, in]."""
        return cls(weight.t(), bias, pack=pack, decode_dtype=decode_dtype, gemv=gemv,
                   gemv_rows=gemv_rows, rows_loop=rows_loop)

    @property
    def extra_nbytes(self) -> int:
        """Bytes held beyond the model's own weight: the packed and the decode copies."""
        total = 0
        for packed in (self.packed, self.decode_packed):
            total += 0 if packed is None else int(torch.ops.mkldnn._nbytes(packed))
        for copy in (self.decode_weight_t, self.decode_native):
            total += 0 if copy is None else copy.numel() * copy.element_size()
        return total

    def decodes_low(self, rows: int) -> bool:
        """Whether a step of `rows` rows runs on a lower-precision decode copy."""
        if not copy_allowed(self.weight_t.dtype):
            return False
        if self.decode_native is not None and self.weight_t.dtype != torch.bfloat16:
            return rows <= self.native_rows
        return rows <= _GEMV_MAX_ROWS and (self.decode_weight_t is not None
                                           or self.decode_packed is not None)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.decode_native is not None and x.shape[0] <= self.native_rows and \
                copy_allowed(self.weight_t.dtype):
            return native.gemv(x, self.decode_native, self.weight_t.shape[1], self.bias,
                               residual, avx512=self.native_avx512, rows_loop=self.rows_loop)
        if self.decodes_low(x.shape[0]):
            return self._decode(x, residual)
        if self.packed is not None and x.shape[0] >= self.packed_min_rows:
            if residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none",
                                                          [], "")
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed,
                                                             self.bias, "add")
        if not self.holds_plain:  # drop_plain promised this never happens
            raise RuntimeError(f"no kernel for a {x.shape[0]}-row product: the plain "
                               "weights were dropped (Linear.plain_needed)")
        toggle = self.gemv_toggle and x.shape[0] <= _GEMV_MAX_ROWS and \
            torch._C._get_mkldnn_enabled()
        if toggle:
            torch._C._set_mkldnn_enabled(False)
        try:
            if residual is None:
                if self.bias is None:
                    return torch.mm(x, self.weight_t)
                return torch.addmm(self.bias, x, self.weight_t)
            if self.bias is None:  # the residual add rides on the matmul
                return torch.addmm(residual, x, self.weight_t)
            return residual + torch.addmm(self.bias, x, self.weight_t)
        finally:
            if toggle:
                torch._C._set_mkldnn_enabled(True)

    def _decode(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The 1-2 row product on the decode copy, packed (`gemv="onednn"`) or in ATen's
        GEMV (oneDNN off, as for bf16 weights above); the result comes back in the
        weights' dtype."""
        copy = self.decode_weight_t
        if self.decode_packed is not None:
            y = torch.ops.mkldnn._linear_pointwise(x.to(self.decode_packed.dtype),
                                                   self.decode_packed, None, "none", [],
                                                   "").to(x.dtype)
        else:
            assert copy is not None
            with _mkldnn_off(torch.backends.mkldnn.is_available()
                             and torch._C._get_mkldnn_enabled()):
                y = torch.mm(x.to(copy.dtype), copy).to(x.dtype)
        if self.bias is not None:
            y += self.bias
        if residual is not None:
            y += residual
        return y


def _release_weight(module: Any) -> None:
    """Leave a model's module with a weight of the same shape and dtype but no storage
    (meta), where its runner serves every product from copies of its own
    (`DecoderRunner.linear`): an fp32 model loaded from a bf16 checkpoint would otherwise
    hold a converted copy that nothing reads. The module cannot run after this; the
    model's dtype and shapes still read (the registry's `_dtype`)."""
    weight = module.weight
    module.weight = torch.nn.Parameter(torch.empty_like(weight, device="meta"),
                                       requires_grad=False)


class Int4Linear(Linear):
    """`x @ W^T + b` with W held in 4 bits: groups of 32 weights along the input, each
    group with its own bf16 scale and offset (w = q * scale + min, q in 0..15).

    That is the grid of llama.cpp's Q4_1, the format of the built-in SmolLM2 GGUF: its
    weights were dequantised into our bf16 safetensors, and re-quantising them here
    finds the same 16 levels per group again (up to bf16 rounding of scale and offset).
    Any other model loses precision, so this is an opt-in serving dtype
    (`GPTSTORE_INFERENCE_DTYPE=int4`), never the default: outputs differ from the exact
    model. Activations stay bf16 (PyTorch's CPU int4 kernel,
    `_weight_int4pack_mm_for_cpu`, is fast only for them). Measured without AMX, all of
    SmolLM2's projections: 5.5 ms per one-row pass against 22 ms in fp32 (4x fewer bytes
    to read) and 34 vs 39 ms at 16 rows.

    `kernel`: "native" runs 1-2 row products (single-stream decoding) in gptstore's own
    kernel on a copy of the 4-bit weights in the order it reads them (native.py
    `gemv_q4`: it quantises each group of 32 activations to int8, as llama.cpp does);
    "native-all" runs every step there (prefill and batches too: its AVX-512 VNNI path
    takes any number of rows), and PyTorch's copy of the weights is not made; "torch"
    keeps PyTorch's kernel. The profile picks by measurement (precision.py,
    `MachineProfile.int4_gemv`). On the Zen 4 EPYC, all of
    SmolLM2's projections at one row, two threads: PyTorch's kernel 4.6-4.7 ms (~18
    GB/s of weights), the native one 3.1 ms (~27 GB/s).
    """

    GROUP = 32

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None = None, *,
                 kernel: str = INT4_TORCH) -> None:
        if kernel not in INT4_KERNELS:
            raise ValueError(f"unknown int4 kernel {kernel!r} (known: {', '.join(INT4_KERNELS)})")
        super().__init__(weight_t, bias, pack=False)
        self.gemv_toggle = False  # the int4 kernel is not oneDNN
        weight = weight_t.t().float()  # [out, in]
        n_out, n_in = weight.shape
        groups = weight.reshape(n_out, n_in // self.GROUP, self.GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = torch.where(high > low, (high - low) / 15, torch.ones_like(low))
        q = ((groups - low[..., None]) / scale[..., None]).round_().clamp_(0, 15)
        self.decode_q4: torch.Tensor | None = None
        self.q4_max_rows: int | None = _GEMV_MAX_ROWS
        if kernel != INT4_TORCH and native.fits_q4(n_in) and native.library() is not None:
            self.decode_q4 = native.pack_q4(q.reshape(n_out, n_in), scale, low)
            if kernel == INT4_NATIVE_ALL:
                self.q4_max_rows = None  # every step
        # PyTorch's kernel and its layout, for the steps the native one does not take
        self.qweight: torch.Tensor | None = None
        self.scales_zeros: torch.Tensor | None = None
        if self.q4_max_rows is not None:
            self.qweight = torch._convert_weight_to_int4pack_for_cpu(
                q.reshape(n_out, n_in).to(torch.int32), 1)
            # The kernel computes (q - 8) * scale + zero: zero = min + 8 * scale.
            self.scales_zeros = torch.stack([scale.t(), (low + 8 * scale).t()], dim=-1) \
                .to(torch.bfloat16).contiguous()  # [in / 32, out, 2]

    @staticmethod
    def fits(weight_t: torch.Tensor) -> bool:
        n_in, n_out = weight_t.shape
        return n_in % Int4Linear.GROUP == 0 and n_out % 16 == 0

    @property
    def plain_needed(self) -> bool:
        return False  # every product runs on the 4-bit weights

    @property
    def extra_nbytes(self) -> int:
        copies = (self.qweight, self.scales_zeros, self.decode_q4)
        return sum(t.numel() * t.element_size() for t in copies if t is not None)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.decode_q4 is not None and (self.q4_max_rows is None
                                           or x.shape[0] <= self.q4_max_rows):
            return native.gemv_q4(x.to(torch.bfloat16), self.decode_q4,
                                  self.weight_t.shape[1], self.bias, residual)
        # built wherever the native kernel leaves steps to PyTorch's
        assert self.qweight is not None and self.scales_zeros is not None
        y = torch._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), self.qweight,
                                              self.GROUP, self.scales_zeros)
        if self.bias is not None:
            y += self.bias
        if residual is not None:
            y += residual
        return y


@dataclass
class Head:
    """The output projection applied to the last hidden state of each row."""

    linear: Linear  # [hidden] -> [out]
    lora_site: str | None = "lm_head"  # LoRA site name, None for a classifier head


class Runner(ABC):
    """The interface the scheduler uses; one runner per loaded base model."""

    vocab_size: int
    context_length: int
    supports_lora: bool = False
    prefix_cache: PrefixCache | None = None  # set by the registry where supported
    supports_prefix_cache: bool = False

    def load_prefix(self, slot: Slot, tokens: Sequence[int], namespace: str,
                    scores: int | None = None) -> list[PrefixBlock]:
        """Copy the cached keys/values of the longest cached prefix of `tokens` into
        `slot` (with `scores`: of blocks that keep scores with that many alternatives);
        return its blocks, which fill the slot's first positions (none: nothing cached)."""
        return []

    def store_prefix(self, slot: Slot, tokens: Sequence[int], namespace: str,
                     read_scores: ScoresReader | None = None) -> None:
        """Offer the keys/values of `tokens` (all in `slot`), and a scored prompt's
        scores, to the prefix cache (runners without one keep nothing)."""
        return None

    @abstractmethod
    def allocate(self) -> Slot: ...

    @abstractmethod
    def release(self, slot: Slot) -> None: ...

    @property
    @abstractmethod
    def free_slots(self) -> int: ...

    @abstractmethod
    def forward(self, rows: Sequence[RowInput], lora: LoraBatch | None = None,
                head: Head | None = None) -> torch.Tensor:
        """Run one step; return float32 outputs [sum of the rows' n_outputs, out] in row
        order."""

    def site_of(self, module: str) -> SiteTarget | None:
        return None

    @property
    def cache_nbytes(self) -> int:
        return 0

    @property
    def extra_nbytes(self) -> int:
        """Memory the runner holds beyond the model's own tensors (packed weights)."""
        return 0

    @property
    def fast_step_rows(self) -> int | None:
        """The most rows of a step that stays on a faster kernel where larger steps
        move to a slower one, if the runner's kernels change so (`DecoderRunner`); the
        prefill pacer keeps a chunk beside decoding rows within it (pacing.py)."""
        return None


@dataclass
class _AttnGroup:
    """Tokens [t0, t1) of the flattened batch and how to attend for them."""

    t0: int
    t1: int
    slot0: int  # first slot (decode run) or the row's slot
    n_rows: int
    length: int  # keys to attend to (max over the run)
    mask: torch.Tensor | None  # decode run: [b, 1, 1, length]; chunk: [T, length]
    decode: bool  # True: one token per row on consecutive slots
    fresh: bool  # chunk starting at 0: attend to its own fresh keys (is_causal)
    cached: bool  # keys/values are (also) in the cache
    # the native kernel: a decode run, or (not `decode`) a few tokens of a prompt after
    # its cached prefix, all on one slot
    native: native.DecodeAttention | None = None


@dataclass
class StepPlan:
    """Everything about a step that does not depend on the layer: built once."""

    n_tokens: int
    token_ids: torch.Tensor  # [N]
    positions: torch.Tensor  # [N]
    write_slots: torch.Tensor | None  # [N'] slot of each cached token
    write_positions: torch.Tensor | None  # [N']
    write_rows: torch.Tensor | slice | None  # which of the N tokens are cached
    groups: list[_AttnGroup]
    last_index: torch.Tensor  # [R] the tokens whose logits are wanted (RowInput.n_outputs)
    max_position: int  # largest position in the step (+1): rotary tables must reach it
    # every token is a decode row on the native attention kernel, which writes the new
    # keys/values into the cache itself (no separate write)
    kernel_writes: bool = False


class DecoderRunner(Runner):
    """Shared machinery of the hand-written decoders: plan, cache writes, attention."""

    supports_lora = True
    supports_prefix_cache = True

    def __init__(self, *, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 vocab_size: int, context_length: int, dtype: torch.dtype,
                 max_slots: int, pack: bool, quantize: str | None = None,
                 decode_dtype: torch.dtype | None = None, gemv: str = GEMV_ATEN,
                 gemv_rows: int = _GEMV_MAX_ROWS, rows_loop: str = ROWS_DOT,
                 attention: str = ATTENTION_SDPA, int4_gemv: str = INT4_TORCH,
                 release_weights: bool = False) -> None:
        if quantize not in (None, "int4"):
            raise ValueError(f"unknown quantization {quantize!r}")
        if quantize and dtype != torch.bfloat16:
            raise ValueError("int4 weights run with bf16 activations: load the model in bf16")
        self.quantize = quantize
        self.n_layers, self.n_heads, self.n_kv_heads = n_layers, n_heads, n_kv_heads
        self.head_dim, self.vocab_size = head_dim, vocab_size
        self.context_length, self.dtype = context_length, dtype
        self.kv = SlotKVCache(n_layers, n_kv_heads, head_dim, max_slots, context_length, dtype)
        self.pack = pack
        # a bf16 copy of fp32 weights for 1-2 row steps (`Linear`); not with int4
        self.decode_dtype = None if quantize or decode_dtype == dtype else decode_dtype
        # the kernel of bf16 1-2 row products (`Linear`), as measured on this CPU
        self.gemv = gemv
        # the most rows of a step the native one serves (`Linear`)
        self.gemv_rows = gemv_rows
        # with the loop measured faster for its steps of several rows (`Linear`)
        self.rows_loop = rows_loop
        # and of 4-bit ones (`Int4Linear`)
        self.int4_gemv = int4_gemv
        # decode rows' attention on the native kernel, where it measured faster and runs
        self.native_attention = attention == ATTENTION_NATIVE and \
            native.attention_fits(head_dim) and native.library() is not None
        # leave the model's modules without the weights no product reads (`linear`)
        self.release_weights = release_weights
        self._linears: list[Linear] = []

    @property
    def fast_step_rows(self) -> int | None:
        """The most rows of a step whose products all stay on the native kernel where
        larger steps move to the batched products (`gemv_rows` beyond 1-2 rows, short of
        every step), or None where the kernels do not change with the rows that way."""
        rows = {linear.native_rows for linear in self._linears
                if linear.decode_native is not None}
        if len(rows) != 1:
            return None
        most = rows.pop()
        return most if _GEMV_MAX_ROWS < most < GEMV_ROWS_ALL else None

    def linear(self, weight_t: torch.Tensor, bias: torch.Tensor | None = None, *,
               own_copy: bool = False, owners: Sequence[Any] = ()) -> Linear:
        """A projection of this model (packed when the runner packs, 4-bit when it
        quantizes and the shape fits the kernel, with a decode copy when the runner
        decodes in a lower precision), from [in, out]. A 4-bit or bf16 LM head picks the
        top candidates; `_refine_top` recomputes their logits from the exact weights, so
        a head keeps them (it names neither `own_copy` nor `owners`).

        Where the layer's other copies serve every product (`Linear.drop_plain`), its
        plain weights are freed: `own_copy`, `weight_t` was made for this layer alone
        (fused weights); `owners`, the model's modules whose weights `weight_t` holds,
        which lose theirs too where the runner was built to `release_weights`."""
        layer: Linear
        if self.quantize == "int4" and Int4Linear.fits(weight_t):
            layer = Int4Linear(weight_t, bias, kernel=self.int4_gemv)
        else:
            layer = Linear(weight_t, bias, pack=self.pack, decode_dtype=self.decode_dtype,
                           gemv=self.gemv, gemv_rows=self.gemv_rows,
                           rows_loop=self.rows_loop)
        if own_copy or (self.release_weights and owners):
            layer.drop_plain()
        if self.release_weights and not layer.holds_plain:
            for module in owners:
                _release_weight(module)
        self._linears.append(layer)
        return layer

    @property
    def extra_nbytes(self) -> int:
        return sum(layer.extra_nbytes for layer in self._linears)

    def allocate(self) -> Slot:
        return self.kv.allocate()

    def release(self, slot: Slot) -> None:
        self.kv.release(slot)

    @property
    def free_slots(self) -> int:
        return self.kv.free_slots

    @property
    def cache_nbytes(self) -> int:
        return self.kv.nbytes

    # -- prefix cache (prefix_cache.py) -------------------------------------------------

    def load_prefix(self, slot: Slot, tokens: Sequence[int], namespace: str,
                    scores: int | None = None) -> list[PrefixBlock]:
        cache = self.prefix_cache
        if cache is None:
            return []
        # keep one token for logits
        blocks = cache.lookup(namespace, tokens, len(tokens) - 1, scores)
        if not blocks:
            return []
        n = sum(block.n_tokens for block in blocks)  # whole blocks, the last maybe part
        self.kv.ensure_capacity(n)
        at = 0
        for block in blocks:
            self.kv.k[:, slot.index, :, at:at + block.n_tokens] = block.k
            self.kv.v[:, slot.index, :, at:at + block.n_tokens] = block.v
            at += block.n_tokens
        slot.length = n
        return blocks

    def store_prefix(self, slot: Slot, tokens: Sequence[int], namespace: str,
                     read_scores: ScoresReader | None = None) -> None:
        cache = self.prefix_cache
        if cache is None or len(tokens) < cache.block_tokens:
            return
        index = slot.index

        def read(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
            return (self.kv.k[:, index, :, start:end].clone(),
                    self.kv.v[:, index, :, start:end].clone())

        cache.insert(namespace, tokens, read, read_scores)

    # -- the step plan ----------------------------------------------------------------

    def plan(self, rows: Sequence[RowInput]) -> StepPlan:
        ids: list[int] = []
        positions: list[int] = []
        w_slots: list[int] = []
        w_pos: list[int] = []
        w_rows: list[int] = []
        groups: list[_AttnGroup] = []
        last: list[int] = []
        need = 0
        run: list[RowInput] = []  # current run of decoding rows on consecutive slots

        def close_run() -> None:
            if not run:
                return
            t1 = len(ids)
            t0 = t1 - len(run)
            ends = [r.start + 1 for r in run]
            length = max(ends)
            slot0 = run[0].slot.index  # type: ignore[union-attr]
            # the native kernel takes each row's length; SDPA needs the padding masked
            kernel = native.DecodeAttention(slot0, ends, self.n_heads, self.n_kv_heads,
                                            self.head_dim) if self.native_attention else None
            mask = None
            if kernel is None and min(ends) != length:
                mask = (torch.arange(length)[None, :] < torch.tensor(ends)[:, None])
                mask = mask[:, None, None, :]
            groups.append(_AttnGroup(t0, t1, slot0, len(run), length, mask, decode=True,
                                     fresh=False, cached=True, native=kernel))
            run.clear()

        for row in rows:
            n = len(row.token_ids)
            t0 = len(ids)
            is_decode = n == 1 and row.slot is not None and row.start > 0
            if not is_decode or (run and row.slot.index != run[-1].slot.index + 1):  # type: ignore[union-attr]
                close_run()
            ids.extend(row.token_ids)
            positions.extend(range(row.start, row.start + n))
            if row.slot is not None:
                w_slots.extend([row.slot.index] * n)
                w_pos.extend(range(row.start, row.start + n))
                w_rows.extend(range(t0, t0 + n))
                need = max(need, row.start + n)
            if is_decode:
                run.append(row)
            elif row.start > 0 and row.slot is not None and self.native_attention \
                    and n <= CHUNK_NATIVE_ROWS:
                # a few tokens after a cached prefix (a chat's next turn): each a decode
                # row of the same slot on the native kernel, once the step's keys are
                # written, not SDPA with a mask
                end = row.start + n
                kernel = native.DecodeAttention(row.slot.index, range(row.start + 1, end + 1),
                                                self.n_heads, self.n_kv_heads, self.head_dim,
                                                one_slot=True)
                groups.append(_AttnGroup(t0, t0 + n, row.slot.index, 1, end, None,
                                         decode=False, fresh=False, cached=True, native=kernel))
            else:
                end = row.start + n
                mask = None
                if row.start > 0:  # a later chunk of a long prompt: causal over the cache
                    q_pos = torch.arange(row.start, end)[:, None]
                    mask = torch.arange(end)[None, :] <= q_pos
                groups.append(_AttnGroup(t0, t0 + n, row.slot.index if row.slot else -1, 1,
                                         end, mask, decode=False, fresh=row.start == 0,
                                         cached=row.slot is not None))
            if row.all_logits:
                last.extend(range(t0, t0 + n))
            elif row.want_logits:
                last.append(t0 + n - 1)
        close_run()

        if need:
            self.kv.ensure_capacity(need)
        n_tokens = len(ids)
        write_rows: torch.Tensor | slice | None = None
        if w_rows:
            write_rows = slice(0, n_tokens) if len(w_rows) == n_tokens else torch.tensor(w_rows)
        return StepPlan(
            n_tokens=n_tokens,
            token_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.tensor(positions, dtype=torch.long),
            write_slots=torch.tensor(w_slots, dtype=torch.long) if w_slots else None,
            write_positions=torch.tensor(w_pos, dtype=torch.long) if w_pos else None,
            write_rows=write_rows,
            groups=groups,
            last_index=torch.tensor(last, dtype=torch.long),
            max_position=max((r.start + len(r.token_ids) for r in rows), default=0),
            kernel_writes=bool(groups) and all(g.native is not None and g.decode
                                               for g in groups),
        )

    def step_attention(self, plan: StepPlan) -> native.DecodeAttention | None:
        """The native attention of every token of `plan` as a row on its own slot and
        position (`DecodeAttention(slots=...)`, which writes every key first), for a
        runner's one native call (llama.py `LlamaRunner.hidden_states`) in a step that is
        not one run of decode rows on consecutive slots: decode rows on any slots and
        prompt chunks of up to `ONE_CALL_CHUNK_TOKENS` tokens beside them, each row with a
        slot. None where the step has another kind of row."""
        if not self.native_attention or plan.write_slots is None \
                or len(plan.write_slots) != plan.n_tokens \
                or any(not g.decode and g.t1 - g.t0 > ONE_CALL_CHUNK_TOKENS
                       for g in plan.groups):
            return None
        return native.DecodeAttention(0, (plan.positions + 1).tolist(), self.n_heads,
                                      self.n_kv_heads, self.head_dim,
                                      slots=plan.write_slots.tolist())

    # -- attention ----------------------------------------------------------------------

    def attend(self, plan: StepPlan, layer: int, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, scale: float,
               rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Attention for all rows. q [N, H, hd], k/v [N, KV, hd] -> [N, H * hd].

        Writes this step's keys/values into the cache first, so decoding rows read
        everything (old and new) from one cache view; in a step of decode rows only on
        the native kernel (`plan.kernel_writes`), the kernel writes them itself, and
        with `rotary` (cos and sign-folded sin tables, only in such a step) it also
        rotates the unrotated q and k it is given.
        """
        n_heads, n_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        k_cache = v_cache = None
        if plan.write_slots is not None:
            k_cache, v_cache = self.kv.k[layer], self.kv.v[layer]  # [slots, KV, cap, hd]
        if plan.kernel_writes:  # decode rows only: the native kernel writes and attends
            assert k_cache is not None and v_cache is not None
            outputs = [g.native(q[g.t0:g.t1], k_cache, v_cache, scale, k[g.t0:g.t1],
                                v[g.t0:g.t1], rotary)
                       for g in plan.groups if g.native is not None]
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
        if rotary is not None:
            raise ValueError("only a step of native decode attention rotates q and k itself")
        if k_cache is not None and v_cache is not None:
            rows = plan.write_rows
            assert rows is not None
            k_w = k if isinstance(rows, slice) else k.index_select(0, rows)
            v_w = v if isinstance(rows, slice) else v.index_select(0, rows)
            k_cache[plan.write_slots, :, plan.write_positions] = k_w
            v_cache[plan.write_slots, :, plan.write_positions] = v_w

        outputs = []
        for g in plan.groups:
            if g.native is not None and not g.decode:  # a chunk's rows on one slot
                assert k_cache is not None and v_cache is not None
                outputs.append(g.native(q[g.t0:g.t1], k_cache, v_cache, scale))
                continue
            if g.decode:
                assert k_cache is not None and v_cache is not None
                if g.native is not None:  # the keys/values were written above
                    outputs.append(g.native(q[g.t0:g.t1], k_cache, v_cache, scale))
                    continue
                # GQA without repeating keys: the G query heads that share a kv head
                # act as G query positions of that head ([b, KV, G, hd]).
                qg = q[g.t0:g.t1].reshape(g.n_rows, n_kv, n_heads // n_kv, hd)
                rows = slice(g.slot0, g.slot0 + g.n_rows)
                keys = k_cache[rows, :, :g.length]  # a view: nothing is copied
                values = v_cache[rows, :, :g.length]
                out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=g.mask,
                                                     scale=scale)
                outputs.append(out.reshape(g.n_rows, n_heads * hd))
                continue
            qc = q[g.t0:g.t1].transpose(0, 1)[None]  # [1, H, T, hd]
            if g.fresh:
                keys = k[g.t0:g.t1].transpose(0, 1)[None]
                values = v[g.t0:g.t1].transpose(0, 1)[None]
            else:
                assert k_cache is not None and v_cache is not None
                keys = k_cache[g.slot0, :, :g.length][None]
                values = v_cache[g.slot0, :, :g.length][None]
            out = F.scaled_dot_product_attention(
                qc, keys, values, attn_mask=g.mask, is_causal=g.fresh, scale=scale,
                enable_gqa=n_kv != n_heads,
            )
            outputs.append(out[0].transpose(0, 1).reshape(g.t1 - g.t0, n_heads * hd))
        if len(outputs) == 1:
            return outputs[0]
        return torch.cat(outputs, dim=0)

    # -- the step -----------------------------------------------------------------------

    @abstractmethod
    def hidden_states(self, plan: StepPlan, lora: LoraBatch | None) -> torch.Tensor:
        """Run the layer stack; return the final-normed hidden states of the last
        tokens of rows wanting logits, [R, hidden]."""

    @abstractmethod
    def default_head(self) -> Head: ...

    def forward(self, rows: Sequence[RowInput], lora: LoraBatch | None = None,
                head: Head | None = None) -> torch.Tensor:
        plan = self.plan(rows)
        # A step of 1-2 tokens is all matrix-vector products: where they run in ATen's
        # GEMV, switch oneDNN off once for the step rather than around each matmul (see
        # `Linear`).
        gemv_step = self.gemv == GEMV_ATEN and torch.bfloat16 in (self.dtype,
                                                                   self.decode_dtype) \
            and plan.n_tokens <= _GEMV_MAX_ROWS \
            and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
        exact = _EXACT_STEP.set(exact_step() or any(row.all_logits for row in rows))
        try:
            with torch.inference_mode(), _mkldnn_off(gemv_step):
                hidden = self.hidden_states(plan, lora)
                head = head or self.default_head()
                out = head.linear(hidden)
                head_lora = lora is not None and head.lora_site is not None \
                    and lora.touches(head.lora_site)
                if lora is not None and head.lora_site is not None:
                    lora.apply(-1, head.lora_site, hidden, out, rows=True)
                low = out.dtype == torch.bfloat16 or head.linear.decodes_low(hidden.shape[0])
                if not low or head_lora:
                    return out.float()
                return _refine_top(out, hidden, head.linear,
                                   native_kernel=self.native_attention)
        finally:
            _EXACT_STEP.reset(exact)


def _refine_top(out: torch.Tensor, hidden: torch.Tensor, linear: Linear,
                k: int = REFINE_TOP, native_kernel: bool = False) -> torch.Tensor:
    """bf16 logits with their top-k recomputed in fp32.

    A bf16 matmul rounds each logit to 8 bits of mantissa: ~0.06 at a logit of 16, which
    turns close candidates into exact ties (SmolLM2 on "What is the capital of France?"
    ties "The" and "L" and answers in French). Recomputing the k largest as fp32 dot
    products of the same bf16 hidden state and weights gives exactly what an fp32 head
    would for the tokens that decide greedy choices, top-p and the reported logprobs, at
    k x hidden multiply-adds instead of a second pass over the whole (vocab x hidden)
    matrix. The tail keeps its bf16 values. With `native_kernel` (where the native decode
    kernels run) one native call does it all where the shapes allow (`native.refine_top`).
    """
    if out.shape[0] == 0:  # a step of prompt chunks only: no row wants logits
        return out.float()
    weight = linear.weight_t.t()  # [vocab, hidden] view
    if native_kernel and linear.bias is None and k < out.shape[-1] and \
            out.dtype == torch.bfloat16 and out.stride(-1) == 1 and \
            hidden.stride(-1) == 1 and weight.stride(-1) == 1 and k <= native.REFINE_MAX_K:
        return native.refine_top(out, hidden, weight, k)
    logits = out.float()
    if linear.bias is not None or logits.shape[-1] <= k:
        if logits.shape[-1] <= 4 * k:  # a classifier head: cheap to do all of it in fp32
            weight = linear.weight_t.float()
            logits = hidden.float() @ weight
            if linear.bias is not None:
                logits += linear.bias.float()
        return logits
    top = logits.topk(k, dim=-1).indices  # [R, k]
    rows = weight[top.reshape(-1)].float().view(*top.shape, -1)  # [R, k, hidden]
    exact = torch.einsum("rkh,rh->rk", rows, hidden.float())
    logits.scatter_(-1, top, exact)
    return logits


class _mkldnn_off:
    def __init__(self, active: bool) -> None:
        self.active = active

    def __enter__(self) -> None:
        if self.active:
            torch._C._set_mkldnn_enabled(False)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch._C._set_mkldnn_enabled(True)
