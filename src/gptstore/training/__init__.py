"""Fine-tuning: from a base model in the store and a training file to a published model.

Public API (torch is imported only when a function that needs it is first used):

- `TrainConfig` (config.py): every option, with help text and `auto` defaults;
- `finetune(config, *, settings, catalog, callbacks) -> FinetuneResult` (loop.py);
- `load_for_inference(catalog, ref) -> (model, tokenizer, InferenceInfo)` and
  `classify(model, tokenizer, info, texts)` (loading.py);
- `evaluate_file(catalog, ref, path)` (evaluate.py): `gptstore eval`;
- `TASKS` / `METHODS` registries (tasks.py, methods.py); `TrainEvent` (logs.py).

Layout: config (options) -> tasks (what is predicted) + methods (what trains) -> loop
(the order of steps) -> checkpoint, logs, evaluate, publish; loading serves inference.
"""

from __future__ import annotations

from typing import Any

from gptstore.training.config import TrainConfig, field_help

__all__ = [
    "METHODS",
    "TASKS",
    "FinetuneResult",
    "InferenceInfo",
    "TrainConfig",
    "TrainEvent",
    "classify",
    "evaluate_file",
    "field_help",
    "finetune",
    "load_for_inference",
]

_LAZY = {
    "finetune": "gptstore.training.loop",
    "FinetuneResult": "gptstore.training.loop",
    "load_for_inference": "gptstore.training.loading",
    "classify": "gptstore.training.loading",
    "InferenceInfo": "gptstore.training.loading",
    "evaluate_file": "gptstore.training.evaluate",
    "TASKS": "gptstore.training.tasks",
    "METHODS": "gptstore.training.methods",
    "TrainEvent": "gptstore.training.logs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gptstore.training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
