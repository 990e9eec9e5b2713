"""Plain-Python types of the inference engine's public API.

What a caller builds (`GenerationRequest`, `SamplingParams`, `ModelSpec`,
`EngineConfig`) and what it gets back (`TokenEvent`, `Usage`, `Completion`). These are
dataclasses with checks in `__post_init__`, not pydantic models: the HTTP layer owns the
wire types (api/openai/protocol.py) and translates them into these. This module imports
no torch, so the API process can build requests without loading the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptstore.errors import InvalidRequest
from gptstore.tasks import CAUSAL_LM, TASKS, TaskName

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass
class SamplingParams:
    """How to pick each next token, and when to stop.

    `temperature=0` is greedy decoding (argmax; identical to `transformers` `generate`
    with `do_sample=False`). Penalties follow OpenAI for `frequency_penalty` /
    `presence_penalty` (on generated tokens, subtracted from logits) and Hugging Face for
    `repetition_penalty` (on prompt and generated tokens, logits divided or multiplied).
    Logprobs are those of the model's own distribution (log-softmax of the raw logits),
    as OpenAI and vLLM report them, not of the tempered / truncated one.
    """

    max_tokens: int | None = 16  # None: until the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k truncation
    seed: int | None = None  # per-request generator: same seed, same tokens
    stop: Sequence[str] = ()  # matched on the decoded text, not included in the output
    stop_token_ids: Sequence[int] | None = None  # ends generation, besides the model's eos
    ignore_eos: bool = False  # True: only stop_token_ids / stop / max_tokens end it
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: also the k most likely alternatives
    # OpenAI's logit_bias: added to each named token's logit before choosing (-100 bans
    # a token, 100 all but forces it); logprobs stay the model's own, as above
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    # vLLM's prompt_logprobs: score the prompt too, each token's logprob given the tokens
    # before it and the k most likely alternatives (0: the token's own only); None: off.
    # What OpenAI's completions `echo` + `logprobs` report, and what evaluation harnesses
    # (lm-evaluation-harness's loglikelihood requests) read
    prompt_logprobs: int | None = None
    # OpenAI's rule for an explicit max_tokens: the prompt and max_tokens must fit the
    # context together (else a context_length_exceeded error); False caps max_tokens at
    # what the context leaves (a server-side default, not the client's own number)
    max_tokens_strict: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
        for token, bias in self.logit_bias.items():
            if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                raise InvalidRequest(f"logit_bias keys must be token ids (integers >= 0), "
                                     f"got {token!r}", param="logit_bias")
            if not (_finite(bias) and -100 <= bias <= 100):
                raise InvalidRequest(f"logit_bias values must be in [-100, 100], got "
                                     f"{bias!r} for token {token}", param="logit_bias")
        checks: list[tuple[str, bool, str]] = [
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 0,
             "at least 0 (0: only score the prompt)"),
            ("temperature", _finite(self.temperature) and self.temperature >= 0, ">= 0"),
            ("top_p", _finite(self.top_p) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k >= 0, ">= 0 (0 disables it)"),
            ("repetition_penalty",
             _finite(self.repetition_penalty) and self.repetition_penalty > 0, "> 0"),
            ("frequency_penalty",
             _finite(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             "in [-2, 2]"),
            ("presence_penalty",
             _finite(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             "in [-2, 2]"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "in [0, 20]"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             "in [0, 20] or None"),
            ("stop", len(self.stop) <= 16, "at most 16 strings"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidRequest(
                    f"{name} must be {rule}, got {getattr(self, name)!r}", param=name
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@dataclass
class GenerationRequest:
    """One completion to run: already-tokenised prompt, the store model name, params.

    The serving layer renders chat templates and tokenises (it has the tokenizer from
    `Engine.tokenizer(model)`); the engine only sees token ids.
    """

    prompt_ids: list[int]
    model: str
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str | None = None  # filled in by the engine when None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise InvalidRequest("the prompt is empty: give at least one token", param="prompt")
        self.prompt_ids = [int(t) for t in self.prompt_ids]


@dataclass
class TopLogprob:
    token_id: int
    text: str
    logprob: float


@dataclass
class PromptLogprobs:
    """The prompt's own tokens scored by the model: for each prompt token, its logprob
    given the tokens before it and the most likely alternatives there. The first token
    has no context: None and no alternatives, as OpenAI's `echo` reports it."""

    logprobs: list[float | None]
    top_logprobs: list[list[TopLogprob] | None]


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: prompt tokens whose keys/values came from the prefix cache instead of being
    #: computed (OpenAI's `usage.prompt_tokens_details.cached_tokens`)
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenEvent:
    """One step of one request's output, as streamed to the caller.

    `text` is the new stable text (possibly "" while a multi-byte character or a
    possible stop string is incomplete). The last event of a request has
    `finish_reason` set and `usage` filled; a cancelled or failed request ends with an
    event whose `token_id` is None.
    """

    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: list[TopLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: BaseException | None = None
    # on the request's first event when SamplingParams.prompt_logprobs asked for them
    prompt_logprobs: PromptLogprobs | None = None


@dataclass
class Completion:
    """All of a finished request's output, as `RequestHandle.result()` collects it."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    usage: Usage
    logprobs: list[float] | None = None
    top_logprobs: list[list[TopLogprob]] | None = None
    prompt_logprobs: PromptLogprobs | None = None


@dataclass
class ModelSpec:
    """What the caller's resolver says a store model name means.

    `base_key` identifies the shared base weights (several names may map to one base:
    adapters on the same base share its memory); `base_loader` builds the base as
    `(model, tokenizer)` when it is not loaded yet; `adapter_dir` is a PEFT LoRA folder
    or None. For `task="classification"` the base is an `*ForSequenceClassification`
    model, or a causal LM plus an adapter that carries the classifier head (PEFT's
    `modules_to_save=["score"]`); `label_names` name its outputs.
    """

    base_key: str
    base_loader: Callable[[], tuple[Any, Any]]
    adapter_dir: Path | None = None
    task: TaskName = CAUSAL_LM
    label_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.adapter_dir is not None:
            self.adapter_dir = Path(self.adapter_dir)
        if self.task not in TASKS:
            raise InvalidRequest(f"unknown task {self.task!r}", param="task")


#: kernels of bf16 1-2 row products (`models/base.Linear`): ATen's GEMV, oneDNN on
#: packed weights, or gptstore's own (native.py, on weights in its packed layout) on
#: AVX2 or on AVX-512 (the same bits); the machine profile's `gemv` is the one measured
#: fastest (precision.py)
GEMV_ATEN, GEMV_ONEDNN, GEMV_NATIVE = "aten", "onednn", "native"
GEMV_NATIVE_AVX512 = "native-avx512"
GEMV_KERNELS = (GEMV_ATEN, GEMV_ONEDNN, GEMV_NATIVE, GEMV_NATIVE_AVX512)
#: loops of the native kernel's steps of two or more bf16 rows on an AVX-512 CPU
#: (gemv_bf16.c): the bf16 dot product (`vdpbf16ps`, where the CPU has it), FMAs on
#: widened weights (the same bits), or AMX tiles from 4 rows (where the CPU has AMX; FMAs
#: below that, and where it has none); the machine profile's `rows_loop` is the one
#: measured fastest (precision.py)
ROWS_DOT, ROWS_FMA, ROWS_AMX = "bf16-dot", "fma", "amx"
ROWS_LOOPS = (ROWS_DOT, ROWS_FMA, ROWS_AMX)
#: `gemv_rows` that has the native kernel serve every step, prompts included (where the
#: machine measured it faster than the batched products for a prompt chunk too)
GEMV_ROWS_ALL = 1 << 20
#: the most rows of the decode steps the machine profile times for `gemv_rows`; an fp32
#: model's bf16 copy serves larger steps only where it holds the weights exactly
#: (models/base.py `Linear`)
GEMV_DECODE_ROWS = 16
#: kernels of 4-bit products: PyTorch's int4 kernel for every step, gptstore's (native.py)
#: for steps of 1-2 rows, or gptstore's for every step
INT4_TORCH, INT4_NATIVE, INT4_NATIVE_ALL = "torch", "native", "native-all"
INT4_KERNELS = (INT4_TORCH, INT4_NATIVE, INT4_NATIVE_ALL)
#: kernels of decode rows' attention (`models/base.DecoderRunner.attend`): PyTorch's
#: `scaled_dot_product_attention`, or gptstore's own (native.py); measured (precision.py)
ATTENTION_SDPA, ATTENTION_NATIVE = "sdpa", "native"
ATTENTION_KERNELS = (ATTENTION_SDPA, ATTENTION_NATIVE)


@dataclass
class EngineConfig:
    """Limits and knobs of one engine."""

    max_running: int = 16  # sequences decoded together (KV-cache slots per base)
    max_queue: int = 64  # requests waiting for a slot; beyond it submit() raises Unavailable
    max_step_tokens: int = 512  # prompt tokens prefilled per step (long prompts are chunked)
    max_context: int | None = None  # cap on the model's own context length (memory)
    base_budget_bytes: int = 4 * 1024**3  # loaded base weights, LRU-evicted beyond it
    adapter_budget_bytes: int = 512 * 1024**2  # loaded LoRA weights, LRU-evicted beyond it
    dtype: str | None = None  # "bfloat16" / "float32" to cast bases on load; None: as loaded
    quantize: str | None = None  # "int4": 4-bit projection weights, bf16 activations
    # "bfloat16": fp32 bases also keep a bf16 copy of their projections for steps of 1-2
    # rows (single-stream decoding), where this CPU measured bf16 faster (precision.py)
    decode_dtype: str | None = None
    # kernel of bf16 1-2 row products: "aten" (its GEMV), "onednn" (packed weights),
    # "native" or "native-avx512" (native.py), the one this CPU measured fastest
    # (precision.py, `MachineProfile.gemv`)
    gemv: str = GEMV_ATEN
    # the most rows of a step the native kernel serves (`gemv` "native" or
    # "native-avx512"): 1-2 rows always, decode steps of more where it measured faster
    # than the batched products, every step (`GEMV_ROWS_ALL`) where a prompt chunk too
    # (precision.py, `MachineProfile.gemv_rows`)
    gemv_rows: int = 2
    # the loop of those steps' bf16 products: "bf16-dot" or "fma", the one this CPU
    # measured faster (precision.py, `MachineProfile.rows_loop`)
    rows_loop: str = ROWS_DOT
    # kernel of 4-bit products (`quantize="int4"`): "torch", "native" (1-2 row steps) or
    # "native-all" (every step), as this CPU measured (precision.py,
    # `MachineProfile.int4_gemv`)
    int4_gemv: str = INT4_TORCH
    # kernel of decode rows' attention: "sdpa" or "native", the one this CPU measured
    # faster (precision.py, `MachineProfile.attention`)
    decode_attention: str = ATTENTION_SDPA
    num_threads: int | None = None  # torch intra-op threads of the scheduler thread
    use_fast_path: bool = True  # False: always the generic transformers forward (tests)
    pack_weights: bool = True  # oneDNN-packed weight copies: faster batches (models/base.py)
    retry_after_s: float = 1.0  # the hint given with Unavailable when the queue is full
    prefix_cache_bytes: int = 256 * 1024**2  # prompt keys/values kept for reuse; 0: off
    # granularity of prefix reuse (prefix_cache.py): a prompt shares at most whole blocks,
    # and SmolLM2's default system header, in front of every chat without a system
    # message, is 24 tokens: 8-token blocks reuse all of it, 32-token blocks none
    prefix_block_tokens: int = 8
    paced_prefill: bool = True  # smaller prefill chunks while others decode (scheduler.py)

    def __post_init__(self) -> None:
        if self.quantize not in (None, "int4"):
            raise InvalidRequest(f"unknown quantization {self.quantize!r} (known: int4)",
                                 param="quantize")
        if self.quantize:
            self.dtype = "bfloat16"  # the int4 kernel's activations
        if self.gemv not in GEMV_KERNELS:
            raise InvalidRequest(f"unknown gemv kernel {self.gemv!r} (known: "
                                 f"{', '.join(GEMV_KERNELS)})", param="gemv")
        if self.gemv_rows < 1:
            raise InvalidRequest(f"gemv_rows must be at least 1, got {self.gemv_rows}",
                                 param="gemv_rows")
        if self.rows_loop not in ROWS_LOOPS:
            raise InvalidRequest(f"unknown rows loop {self.rows_loop!r} (known: "
                                 f"{', '.join(ROWS_LOOPS)})", param="rows_loop")
        if self.int4_gemv not in INT4_KERNELS:
            raise InvalidRequest(f"unknown int4 kernel {self.int4_gemv!r} (known: "
                                 f"{', '.join(INT4_KERNELS)})", param="int4_gemv")
        if self.decode_attention not in ATTENTION_KERNELS:
            raise InvalidRequest(f"unknown attention kernel {self.decode_attention!r} "
                                 f"(known: {', '.join(ATTENTION_KERNELS)})",
                                 param="decode_attention")
        if self.prefix_cache_bytes < 0:
            raise InvalidRequest("prefix_cache_bytes must be >= 0 (0 turns the prefix "
                                 "cache off)", param="prefix_cache_bytes")
        for name in ("max_running", "max_queue", "max_step_tokens", "prefix_block_tokens"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be at least 1", param=name)
