"""Which bases and adapters are in memory: load on first use, evict the least recently
used beyond a byte budget.

The registry does not know what a store model name means: the caller's resolver turns a
name into a `ModelSpec` (a base key, a loader callback, maybe a LoRA folder) and the
registry loads what the spec asks for. Several names can share one base; adapters on a
base share its weights. Anything in use by a running or queued request is pinned and
never evicted; budgets are targets (a base larger than the budget still loads, after
everything unpinned has been evicted), because refusing to serve the only model asked
for helps nobody.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptstore.errors import InvalidRequest
from gptstore.inference.lora import LoraAdapter, load_lora_adapter
from gptstore.inference.models import Runner, build_runner
from gptstore.inference.prefix_cache import PrefixCache
from gptstore.inference.threads import StepThreads
from gptstore.inference.types import EngineConfig, ModelSpec
from gptstore.tasks import CLASSIFIER_SUFFIX

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedBase:
    key: str
    model: Any
    tokenizer: Any
    runner: Runner
    nbytes: int
    eos_token_ids: frozenset[int]
    is_classifier: bool
    label_names: list[str] | None
    #: torch intra-op threads of this base's steps: measured on loading
    #: (precision.step_threads), then checked on its steps (threads.py)
    threads: StepThreads = field(default_factory=lambda: StepThreads(1))
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class LoadedAdapter:
    adapter: LoraAdapter
    base_key: str
    pins: int = 0
    last_used: float = field(default_factory=time.monotonic)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class ModelRegistry:
    """Loaded bases and adapters, with LRU eviction under byte budgets."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._bases: dict[str, LoadedBase] = {}
        self._adapters: dict[tuple[str, str], LoadedAdapter] = {}
        self.evictions: list[str] = []  # keys evicted so far, oldest first (for stats/tests)
        #: the most intra-op threads a step may use: as configured, else torch's default
        #: in the thread that builds the engine (the machine's cores unless limited)
        self.threads = config.num_threads or _torch_threads()

    # -- public ---------------------------------------------------------------------------

    def acquire(self, spec: ModelSpec) -> tuple[LoadedBase, LoadedAdapter | None]:
        """Load (if needed) and pin the base and adapter of `spec`; pair with `release`."""
        with self._lock:
            base = self._base(spec)
            base.pins += 1
            try:
                adapter = self._adapter(base, spec.adapter_dir) if spec.adapter_dir else None
            except BaseException:
                base.pins -= 1
                raise
            if adapter is not None:
                adapter.pins += 1
            return base, adapter

    def is_loaded(self, spec: ModelSpec) -> bool:
        """Whether `acquire(spec)` would find everything in memory (no loading)."""
        with self._lock:
            if spec.base_key not in self._bases:
                return False
            return spec.adapter_dir is None or \
                (spec.base_key, str(Path(spec.adapter_dir).resolve())) in self._adapters

    def release(self, base: LoadedBase, adapter: LoadedAdapter | None) -> None:
        with self._lock:
            base.pins = max(0, base.pins - 1)
            base.last_used = time.monotonic()
            if adapter is not None:
                adapter.pins = max(0, adapter.pins - 1)
                adapter.last_used = time.monotonic()
            # What was pinned over the budget can go now that it is free (but not the
            # model just used: it is the likeliest to be asked for again).
            self._evict_bases(keep=base)
            if adapter is not None:
                self._evict_adapters(keep=adapter)

    def loaded(self) -> dict[str, list[str]]:
        """Base keys -> adapter folders currently loaded."""
        with self._lock:
            out: dict[str, list[str]] = {key: [] for key in self._bases}
            for (base_key, folder) in self._adapters:
                out.setdefault(base_key, []).append(folder)
            return out

    def step_threads(self) -> dict[str, int]:
        """Base keys -> the intra-op threads their steps run with now."""
        with self._lock:
            return {key: base.threads.chosen for key, base in self._bases.items()}

    def prefix_cache_stats(self) -> dict[str, int]:
        """Bytes, blocks, reused prompt tokens and evictions of the bases' prefix caches."""
        with self._lock:
            caches = [b.runner.prefix_cache for b in self._bases.values()
                      if b.runner.prefix_cache is not None]
            return {"prefix_cache_bytes": sum(c.nbytes for c in caches),
                    "prefix_cache_blocks": sum(len(c) for c in caches),
                    "prefix_cache_hit_tokens": sum(c.hit_tokens for c in caches),
                    "prefix_cache_evicted_blocks": sum(c.evicted_blocks for c in caches)}

    @property
    def base_bytes(self) -> int:
        return sum(b.nbytes for b in self._bases.values())

    @property
    def adapter_bytes(self) -> int:
        return sum(a.adapter.nbytes for a in self._adapters.values())

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes the bases' KV caches hold: the live sequences' and the warm slots'."""
        with self._lock:
            return sum(b.runner.cache_nbytes for b in self._bases.values())

    # -- bases ----------------------------------------------------------------------------

    def _base(self, spec: ModelSpec) -> LoadedBase:
        base = self._bases.get(spec.base_key)
        if base is None:
            base = self._load_base(spec)
            self._bases[spec.base_key] = base
            self._evict_bases(keep=base)
        base.last_used = time.monotonic()
        return base

    def _load_base(self, spec: ModelSpec) -> LoadedBase:
        import torch

        started = time.monotonic()
        model, tokenizer = spec.base_loader()
        if self.config.dtype:
            model = model.to(getattr(torch, self.config.dtype))
        model.eval()
        decode_dtype = _torch_dtype(self.config.decode_dtype)
        runner = build_runner(model, max_slots=self.config.max_running,
                              max_context=self.config.max_context,
                              fast=self.config.use_fast_path,
                              pack=self.config.pack_weights, quantize=self.config.quantize,
                              decode_dtype=decode_dtype, gemv=self.config.gemv,
                              gemv_rows=self.config.gemv_rows,
                              rows_loop=self.config.rows_loop,
                              attention=self.config.decode_attention,
                              int4_gemv=self.config.int4_gemv, release_weights=True)
        is_classifier = type(model).__name__.endswith(CLASSIFIER_SUFFIX)
        if runner.supports_prefix_cache and self.config.prefix_cache_bytes and not is_classifier:
            runner.prefix_cache = PrefixCache(self.config.prefix_cache_bytes,
                                              self.config.prefix_block_tokens)
        labels = None
        if is_classifier:
            id2label = getattr(model.config, "id2label", None) or {}
            labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]
        base = LoadedBase(
            key=spec.base_key, model=model, tokenizer=tokenizer, runner=runner,
            nbytes=_model_bytes(model) + runner.extra_nbytes,
            eos_token_ids=_eos_ids(model, tokenizer),
            is_classifier=is_classifier, label_names=labels,
            threads=StepThreads(self._threads_for(model, decode_dtype), most=self.threads,
                                checked=not self.config.num_threads),
        )
        log.info("loaded base %s (%s, %.0f MB, %d threads) in %.1f s", spec.base_key,
                 type(runner).__name__, base.nbytes / 1e6, base.threads.chosen,
                 time.monotonic() - started)
        return base

    def _threads_for(self, model: Any, decode_dtype: Any) -> int:
        """The configured threads, or as many as the model's projections measure worth
        splitting over (precision.step_threads), at most the engine's threads."""
        import torch

        from gptstore.inference.precision import step_threads

        if self.config.num_threads:
            return self.config.num_threads
        config = model.config
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        if not hidden:
            return self.threads
        inner = getattr(config, "intermediate_size", None) or \
            getattr(config, "n_inner", None) or 4 * hidden
        dtype = torch.bfloat16 if self.config.quantize else next(model.parameters()).dtype
        return step_threads(self.config.max_running, hidden, inner, dtype, self.threads,
                            decode_dtype=decode_dtype, pack=self.config.pack_weights,
                            gemv=self.config.gemv)

    def _evict_bases(self, keep: LoadedBase) -> None:
        budget = self.config.base_budget_bytes
        while self.base_bytes > budget:
            victims = [b for b in self._bases.values() if b is not keep and b.pins == 0]
            if not victims:
                return
            victim = min(victims, key=lambda b: b.last_used)
            self._drop_base(victim)

    def _drop_base(self, base: LoadedBase) -> None:
        del self._bases[base.key]
        for key in [k for k in self._adapters if k[0] == base.key]:
            del self._adapters[key]
        self.evictions.append(base.key)
        log.info("evicted base %s", base.key)

    # -- adapters -------------------------------------------------------------------------

    def _adapter(self, base: LoadedBase, folder: Path) -> LoadedAdapter:
        key = (base.key, str(Path(folder).resolve()))
        loaded = self._adapters.get(key)
        if loaded is None:
            if not base.runner.supports_lora:
                raise InvalidRequest(
                    f"LoRA adapters on {type(base.model).__name__} cannot be served yet "
                    "(supported: Llama, Mistral, Qwen2 and GPT-2 bases); merge the adapter "
                    "into its base to serve it", param="model")
            adapter = load_lora_adapter(Path(folder), key[1], base.runner.site_of,
                                        getattr(base.runner, "dtype", None) or _dtype(base))
            loaded = LoadedAdapter(adapter=adapter, base_key=base.key)
            self._adapters[key] = loaded
            self._evict_adapters(keep=loaded)
        loaded.last_used = time.monotonic()
        return loaded

    def _evict_adapters(self, keep: LoadedAdapter) -> None:
        budget = self.config.adapter_budget_bytes
        while self.adapter_bytes > budget:
            victims = [(k, a) for k, a in self._adapters.items() if a is not keep and a.pins == 0]
            if not victims:
                return
            key, _ = min(victims, key=lambda item: item[1].last_used)
            del self._adapters[key]
            self.evictions.append(key[1])
            log.info("evicted adapter %s", key[1])


def _dtype(base: LoadedBase) -> Any:
    return next(base.model.parameters()).dtype


def _model_bytes(model: Any) -> int:
    """Bytes of distinct tensor storage (tied and fused weights counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_meta:  # released to the runner's own copies (build_runner)
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Tokens that end generation: the generation config's eos ids and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
        if ids:  # the first source that names any wins (as generate does)
            break
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(tok_eos, int):
        ids.add(tok_eos)
    return frozenset(ids)


def _torch_dtype(name: str | None) -> Any:
    """"bfloat16" -> torch.bfloat16; None stays None."""
    import torch

    return getattr(torch, name) if name else None
