"""The inference engine over the store: what a store name means to the engine, and the
one place an engine is built from settings.

- `store_resolver(catalog)`: a store name -> `ModelSpec`. A full version is its own base
  (keyed by manifest digest, so two names for the same bytes share memory); an adapter
  version points at its base version's weights plus its own PEFT folder, so all
  adapters of one base share one copy of it; an adapter that saves whole modules other
  than a classifier head (a trained LM head) is served merged, as a model of its own.
  The engine asks for a name several times a request (its tokenizer, the submit): an
  answer is reused for `RESOLVE_CACHE_S` while this process has written nothing to the
  database, so a request costs the catalog's queries at most once, and a flood of
  requests for one model none at all. A version published by another process (a job,
  the CLI) becomes a name's latest here within that time; a deleted model is refused
  at once by the HTTP routes, which ask the catalog themselves.
- `build_engine(settings, catalog)`: the `Engine` the HTTP server and the CLI run, with
  the deployment's limits and precision (`GPTSTORE_INFERENCE_DTYPE`; `auto`: the dtype
  measured faster on this machine, `precision.py`).

Every model is loaded by `loader.load_version`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gptstore.catalog.repository import Catalog
from gptstore.inference.loader import (
    load_merged,
    load_version,
    saves_whole_modules,
    weights_version,
)
from gptstore.inference.precision import int4_profile, machine_profile
from gptstore.inference.types import EngineConfig, ModelSpec
from gptstore.settings import Settings

if TYPE_CHECKING:
    from gptstore.inference.engine import Engine


#: seconds a store name's resolution is reused (see the module docstring)
RESOLVE_CACHE_S = 2.0
#: names remembered at most (the memo is cleared when it fills)
_RESOLVE_CACHE_MAX = 1000


def engine_config(settings: Settings, **overrides: Any) -> EngineConfig:
    """The engine's limits and precision from the settings (`overrides` win)."""
    values: dict[str, Any] = {
        "base_budget_bytes": settings.max_loaded_bytes,
        "max_running": settings.max_batch,
        "max_queue": settings.max_queue,
        "max_context": settings.max_context,
        "prefix_cache_bytes": settings.prefix_cache_bytes,
    }
    profile = machine_profile(settings.home)  # measured once per machine (precision.py)
    if settings.inference_dtype == "int4":
        values["quantize"] = "int4"  # EngineConfig sets the bf16 activations it needs
        # an explicit kernel wins (and skips the timing); auto: timed on first use
        values["int4_gemv"] = settings.int4_kernel if settings.int4_kernel != "auto" \
            else int4_profile(settings.home).int4_gemv
    elif settings.inference_dtype != "auto":
        values["dtype"] = settings.inference_dtype  # an explicit setting wins
    elif "dtype" not in overrides:
        values["dtype"] = profile.serving_dtype_name
        values["decode_dtype"] = profile.decode_dtype_name
    values["gemv"] = profile.gemv  # the 1-row kernel measured faster here, any dtype
    values["gemv_rows"] = profile.gemv_rows  # and the decode steps it serves
    values["rows_loop"] = profile.rows_loop  # with the loop measured faster for them
    values["decode_attention"] = profile.attention  # likewise decode rows' attention
    values.update(overrides)
    return EngineConfig(**values)


def build_engine(settings: Settings, catalog: Catalog, **overrides: Any) -> Engine:
    """An engine serving the store's models (started; call `shutdown()` when done)."""
    from gptstore.inference.engine import Engine

    config = engine_config(settings, **overrides)
    return Engine(store_resolver(catalog, dtype=config.dtype), config)


def store_resolver(catalog: Catalog, *, dtype: str | None = None) -> Any:
    """The engine's resolver over the store: a model name -> `ModelSpec`.

    `dtype` ("bfloat16" / "float32") overrides the loader's preferred dtype; weights
    load straight in it.
    """
    import torch

    torch_dtype = getattr(torch, dtype) if dtype else None
    db = catalog.db
    #: name -> (its spec, the database generation it was read at, when it expires)
    memo: dict[str, tuple[ModelSpec, int, float]] = {}

    def cached(name: str) -> ModelSpec:
        now, generation = time.monotonic(), db.generation
        hit = memo.get(name)
        if hit is not None and hit[1] == generation and hit[2] > now:
            return hit[0]
        spec = resolve(name)  # NotFound and the like are never remembered
        if len(memo) >= _RESOLVE_CACHE_MAX:
            memo.clear()
        memo[name] = (spec, generation, now + RESOLVE_CACHE_S)
        return spec

    def resolve(name: str) -> ModelSpec:
        version = catalog.resolve(name)
        labels = version.lineage.get("label_names")
        if saves_whole_modules(catalog, version):
            def merged() -> tuple[Any, Any]:
                loaded = load_merged(catalog, version, dtype=torch_dtype)
                return loaded.model, loaded.tokenizer

            return ModelSpec(base_key=version.manifest_digest, base_loader=merged,
                             task=version.task, label_names=labels)
        base = weights_version(catalog, version)
        adapter_dir = catalog.snapshot(version) if version.kind == "adapter" else None

        def load_base() -> tuple[Any, Any]:
            loaded = load_version(catalog, base, dtype=torch_dtype)
            return loaded.model, loaded.tokenizer

        return ModelSpec(base_key=base.manifest_digest, base_loader=load_base,
                         adapter_dir=adapter_dir, task=version.task, label_names=labels)

    return cached
