"""`Engine`: the inference engine's front door (generation and classification).

The caller supplies a resolver, `resolve(model_name) -> ModelSpec`, that says which base
weights a store name needs, how to load them and which LoRA folder (if any) goes on top;
the engine loads and evicts (registry.py), batches every request of every model on one
background thread (scheduler.py) and streams tokens back through `RequestHandle`s.

    engine = Engine(resolve, EngineConfig(max_running=16))
    handle = engine.submit(GenerationRequest(prompt_ids=ids, model="acme/helper",
                                             params=SamplingParams(temperature=0)))
    for event in handle:                # or: async for event in handle
        print(event.text, end="")
    engine.classify("acme/sentiment", ["great film"])  # [[("negative", 0.1), ("positive", 0.9)]]
    engine.shutdown()

No HTTP, no pydantic, no database: the serving layer validates wire requests, renders
chat templates with `engine.tokenizer(name)`, and maps `gptstore.errors` to responses.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptstore.errors import ContextLengthExceeded, InvalidRequest
from gptstore.inference.detokenize import IncrementalDetokenizer, StopStringMatcher
from gptstore.inference.handle import RequestHandle
from gptstore.inference.lora import LoraBatch
from gptstore.inference.models import Head, Linear, RowInput
from gptstore.inference.models.base import exact_products
from gptstore.inference.registry import LoadedAdapter, LoadedBase, ModelRegistry
from gptstore.inference.sampling import SamplerState
from gptstore.inference.scheduler import Scheduler
from gptstore.inference.scheduler import Sequence as RunningSequence
from gptstore.inference.types import (
    Completion,
    EngineConfig,
    GenerationRequest,
    ModelSpec,
    SamplingParams,
)
from gptstore.tasks import CAUSAL_LM

Resolver = Callable[[str], ModelSpec]
LabelProbs = list[tuple[str, float]]


@dataclass
class ServedModelInfo:
    """What the serving layer needs to know about a loaded model."""

    name: str
    base_key: str
    task: str
    context_length: int
    eos_token_ids: frozenset[int]
    label_names: list[str] | None
    runner: str  # "LlamaRunner", "GPT2Runner" or "GenericRunner"


class Engine:
    """Serves many concurrent requests for many models with continuous batching."""

    def __init__(self, resolve: Resolver, config: EngineConfig | None = None, *,
                 start: bool = True) -> None:
        self.resolve = resolve
        self.config = config or EngineConfig()
        self.registry = ModelRegistry(self.config)
        self.scheduler = Scheduler(self.config, self.registry)
        if start:
            self.start()

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop the engine thread; requests still running end with "cancelled"."""
        self.scheduler.stop()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- generation -------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a generation request; its tokens stream through the returned handle.

        Raises `InvalidRequest` (prompt too long, token ids out of range, a classifier
        model), `NotFound` (from the resolver) and `Unavailable` (queue full).
        """
        spec = self.resolve(request.model)
        if spec.task != CAUSAL_LM:
            raise InvalidRequest(f"{request.model} is a {spec.task} model: use classification, "
                                 "not completions", param="model")
        base, adapter = self._acquire(spec)
        try:
            seq = self._sequence(request, base, adapter)
            self.scheduler.add(seq)
        except BaseException:
            self.registry.release(base, adapter)
            raise
        return seq.handle

    def generate(self, model: str, prompt_ids: list[int], params: SamplingParams | None = None,
                 *, timeout: float | None = None) -> Completion:
        """Submit and wait: the whole completion at once."""
        handle = self.submit(GenerationRequest(prompt_ids=prompt_ids, model=model,
                                               params=params or SamplingParams()))
        return handle.result(timeout=timeout)

    def _sequence(self, request: GenerationRequest, base: LoadedBase,
                  adapter: LoadedAdapter | None) -> RunningSequence:
        runner = base.runner
        if base.is_classifier:
            raise InvalidRequest(f"{request.model} is a classification model and cannot "
                                 "generate text", param="model")
        n_prompt, context = len(request.prompt_ids), runner.context_length
        params = request.params
        if n_prompt >= context:
            # Neutral wording: the serving layer knows whether it was `messages` or `prompt`.
            raise ContextLengthExceeded(f"prompt has {n_prompt} tokens, the model's context "
                                        f"is {context}; shorten it")
        if params.max_tokens_strict and params.max_tokens is not None \
                and n_prompt + params.max_tokens > context:
            raise ContextLengthExceeded(
                f"the model's context is {context} tokens, and {n_prompt + params.max_tokens}"
                f" were asked for ({n_prompt} in the prompt, {params.max_tokens} for the "
                f"completion); shorten the prompt or ask for at most "
                f"{context - n_prompt} new tokens")
        bad = [t for t in request.prompt_ids if not 0 <= t < runner.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the model's vocabulary "
                                 f"(0..{runner.vocab_size - 1})", param="prompt")
        outside = [t for t in params.logit_bias if t >= runner.vocab_size]
        if outside:
            raise InvalidRequest(f"logit_bias names token {outside[0]}, outside the model's "
                                 f"vocabulary (0..{runner.vocab_size - 1})",
                                 param="logit_bias")
        request.request_id = request.request_id or f"cmpl-{uuid.uuid4().hex[:24]}"
        max_new = min(math.inf if params.max_tokens is None else params.max_tokens,
                      context - n_prompt)
        stop_ids = frozenset(params.stop_token_ids or ()) | (
            frozenset() if params.ignore_eos else base.eos_token_ids)
        seq: RunningSequence
        handle = RequestHandle(request.request_id, n_prompt,
                               on_cancel=lambda _h: self.scheduler.cancel(seq))
        seq = RunningSequence(
            request=request, handle=handle, base=base, adapter=adapter,
            max_new_tokens=int(max_new), stop_ids=stop_ids,
            sampler=SamplerState(params, request.prompt_ids, runner.vocab_size),
            detok=IncrementalDetokenizer(base.tokenizer, request.prompt_ids),
            stopper=StopStringMatcher(params.stop),
        )
        return seq

    # -- classification ---------------------------------------------------------------

    def classify(self, model: str, texts: Sequence[str], *,
                 timeout: float | None = None) -> list[LabelProbs]:
        """Label probabilities for each text, in label order: [[(label, p), ...], ...]."""
        return self._classify_future(model, texts).result(timeout=timeout)

    def _classify_future(self, model: str, texts: Sequence[str]) -> Any:
        spec = self.resolve(model)
        if spec.task != "classification":
            raise InvalidRequest(f"{model} is a {spec.task} model, not a classifier",
                                 param="model")
        if isinstance(texts, str):
            texts = [texts]
        base, adapter = self._acquire(spec)
        try:
            head, labels = self._classifier_head(model, spec, base, adapter)
            tokenizer, context = base.tokenizer, base.runner.context_length
            token_lists = [list(tokenizer(text)["input_ids"]) for text in texts]
            for i, ids in enumerate(token_lists):
                if not ids:
                    raise InvalidRequest(f"text {i} is empty", param="input")
                if len(ids) > context:
                    raise InvalidRequest(f"text {i} has {len(ids)} tokens, the model's context "
                                         f"is {context}", param="input")
        except BaseException:
            self.registry.release(base, adapter)
            raise

        def job() -> list[LabelProbs]:
            try:
                return self._run_classification(base, adapter, head, labels, token_lists)
            finally:
                self.registry.release(base, adapter)

        return self.scheduler.run_job(job)

    def _classifier_head(self, model: str, spec: ModelSpec, base: LoadedBase,
                         adapter: LoadedAdapter | None) -> tuple[Head | None, list[str]]:
        head: Head | None = None
        if adapter is not None and adapter.adapter.head_weight is not None:
            head = Head(Linear.of(adapter.adapter.head_weight, adapter.adapter.head_bias),
                        lora_site=None)
            n_labels = adapter.adapter.head_weight.shape[0]
        elif base.is_classifier:
            head = getattr(base.runner, "score", None)  # None: generic runner, own head
            n_labels = len(base.label_names or [])
        else:
            raise InvalidRequest(f"{model} has no classifier head: its adapter must save the "
                                 "head (modules_to_save=['score']) or its base must be a "
                                 "sequence-classification model", param="model")
        labels = list(spec.label_names or [])
        if not labels and adapter is None and base.label_names:
            labels = list(base.label_names)
        if labels and len(labels) != n_labels:
            raise InvalidRequest(f"{model} has {n_labels} outputs but {len(labels)} label "
                                 "names", param="model")
        return head, labels or [f"LABEL_{i}" for i in range(n_labels)]

    def _run_classification(self, base: LoadedBase, adapter: LoadedAdapter | None,
                            head: Head | None, labels: list[str],
                            token_lists: list[list[int]]) -> list[LabelProbs]:
        results: list[LabelProbs] = []
        budget = max(self.config.max_step_tokens, 1)
        start = 0
        while start < len(token_lists):  # batches of about `max_step_tokens` tokens
            end, used = start, 0
            while end < len(token_lists) and (end == start or used + len(token_lists[end])
                                              <= budget):
                used += len(token_lists[end])
                end += 1
            chunk = token_lists[start:end]
            rows = [RowInput(None, ids, 0) for ids in chunk]
            lora = None
            if adapter is not None:
                lora = LoraBatch.build([adapter.adapter for ids in chunk for _ in ids],
                                       [adapter.adapter] * len(chunk))
            with exact_products():  # not a short batch's decode copy (models/base.py)
                logits = base.runner.forward(rows, lora, head)
            probs = torch.softmax(logits.float(), dim=-1).tolist()
            results += [list(zip(labels, row, strict=True)) for row in probs]
            start = end
        return results

    # -- introspection ----------------------------------------------------------------

    def load(self, model: str) -> None:
        """Load `model`'s base and adapter now, as its first request would (a server's
        preload); kept loaded like any other, under the memory budget."""
        self._with_loaded(model, lambda _base, _adapter: None)

    def tokenizer(self, model: str) -> Any:
        """The tokenizer of `model` (loads its base if needed)."""
        return self._with_loaded(model, lambda base, _a: base.tokenizer)

    def model_info(self, model: str) -> ServedModelInfo:
        spec = self.resolve(model)
        return self._with_loaded(model, lambda base, _a: ServedModelInfo(
            name=model, base_key=base.key, task=spec.task,
            context_length=base.runner.context_length, eos_token_ids=base.eos_token_ids,
            label_names=spec.label_names or base.label_names,
            runner=type(base.runner).__name__,
        ))

    def _with_loaded(self, model: str, fn: Callable[[LoadedBase, LoadedAdapter | None], Any]
                     ) -> Any:
        base, adapter = self._acquire(self.resolve(model))
        try:
            return fn(base, adapter)
        finally:
            self.registry.release(base, adapter)

    def _acquire(self, spec: ModelSpec) -> tuple[LoadedBase, LoadedAdapter | None]:
        """Pin the base and adapter of `spec`, loading them on the engine thread.

        Why there: PyTorch's OpenMP runtime (libgomp) keeps a team of worker threads per
        calling thread, and once the threads of all teams outnumber the cores it stops
        letting idle workers spin between parallel regions. Decoding is hundreds of
        short matmuls per token, so a second team (made by loading a model on a request
        thread) slowed every step by half on this 2-core machine (25 -> 39 ms/token).
        With all heavy torch work on one thread there is one team. Already-loaded models
        are pinned right here, without waiting for the engine's current step.
        """
        if self.scheduler.on_engine_thread or self.registry.is_loaded(spec):
            return self.registry.acquire(spec)
        result: tuple[LoadedBase, LoadedAdapter | None] = \
            self.scheduler.run_job(lambda: self.registry.acquire(spec)).result()
        return result

    def stats(self) -> dict[str, Any]:
        return {
            "running": self.scheduler.running_count,
            "waiting": self.scheduler.waiting_count,
            "steps": self.scheduler.steps,
            "loaded": self.registry.loaded(),
            "step_threads": self.registry.step_threads(),
            "base_bytes": self.registry.base_bytes,
            "adapter_bytes": self.registry.adapter_bytes,
            "kv_cache_bytes": self.registry.kv_cache_bytes,
            **self.registry.prefix_cache_stats(),
        }
