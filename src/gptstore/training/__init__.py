"""Fine-tuning: from a base model in the store and a training file to a published model.

Public API (torch is imported only when a function that needs it is first used):

- `TrainConfig` (config.py): every option, with help text and `auto` defaults;
- `finetune(config, *, settings, catalog, callbacks) -> FinetuneResult` (loop.py);
- `RunRecord` (record.py): a finished run as a value, which publish, the CLI and the
  jobs worker read;
- `evaluate_file(catalog, ref, path)` (evaluate.py): `gptstore eval`;
- `TASK_REGISTRY` / `METHODS` registries (tasks.py, methods.py); `TrainEvent` (logs.py).

Layout: config (options) -> prepare (data, config resolved once) -> tasks (what is
predicted) + methods (what trains) -> loop (the order of steps) -> checkpoint, logs,
evaluate -> record -> publish. Models are loaded by `inference.loader`, the one loader;
nothing in `inference` imports `training`.
"""

from __future__ import annotations

from typing import Any

from gptstore.training.config import TrainConfig, field_help

__all__ = [
    "METHODS",
    "TASK_REGISTRY",
    "FinetuneResult",
    "RunRecord",
    "TrainConfig",
    "TrainEvent",
    "evaluate_file",
    "field_help",
    "finetune",
]

_LAZY = {
    "finetune": "gptstore.training.loop",
    "FinetuneResult": "gptstore.training.loop",
    "RunRecord": "gptstore.training.record",
    "evaluate_file": "gptstore.training.evaluate",
    "TASK_REGISTRY": "gptstore.training.tasks",
    "METHODS": "gptstore.training.methods",
    "TrainEvent": "gptstore.training.logs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gptstore.training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
