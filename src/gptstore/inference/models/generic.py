"""The fallback runner: any `transformers` causal LM through its own forward.

For architectures without a hand-written decoder (Phi, Gemma, Qwen3, ...). Each
sequence keeps its own `DynamicCache`; a step runs the model once per row (rows of
different lengths cannot share a `DynamicCache` without padding bookkeeping that would
cost more than it saves on a CPU). Correct for every architecture transformers
supports, but without the batching speed-up, and without LoRA adapters (the engine
refuses them here with a clear error). Classification models run text by text.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from gptstore.inference.kv_cache import Slot
from gptstore.inference.lora import LoraBatch
from gptstore.inference.models.base import Head, RowInput, Runner


class _CacheSlot(Slot):
    cache: Any = None


class GenericRunner(Runner):
    supports_lora = False

    def __init__(self, model: Any, *, max_slots: int, max_context: int | None = None) -> None:
        self.model = model
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
            else model.config
        self.vocab_size = int(getattr(config, "vocab_size", 0))
        context = (getattr(config, "max_position_embeddings", None)
                   or getattr(config, "n_positions", None) or 2048)
        self.context_length = min(int(context), max_context) if max_context else int(context)
        self.max_slots = max_slots
        self._live: list[_CacheSlot] = []
        self.is_classifier = getattr(model, "score", None) is not None \
            or type(model).__name__.endswith("ForSequenceClassification")
        # transformers 5 renamed `past_key_values` to `cache`; use whichever it takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def allocate(self) -> Slot:
        from transformers import DynamicCache

        if len(self._live) >= self.max_slots:
            raise RuntimeError("no free slot (the scheduler should have waited)")
        slot = _CacheSlot(index=len(self._live))
        slot.cache = DynamicCache()
        self._live.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        if slot in self._live:
            self._live.remove(slot)
        slot.cache = None  # type: ignore[attr-defined]

    @property
    def free_slots(self) -> int:
        return self.max_slots - len(self._live)

    def forward(self, rows: Sequence[RowInput], lora: LoraBatch | None = None,
                head: Head | None = None) -> torch.Tensor:
        if lora is not None:
            raise RuntimeError("the generic runner cannot apply LoRA adapters")
        outputs = []
        with torch.inference_mode():
            if all(r.slot is None for r in rows) and self.is_classifier:
                return self._classify(rows)
            for row in rows:
                ids = torch.tensor([row.token_ids], dtype=torch.long)
                positions = torch.arange(row.start, row.start + len(row.token_ids))[None]
                cache = row.slot.cache if row.slot is not None else None  # type: ignore[attr-defined]
                out = self.model(input_ids=ids, position_ids=positions,
                                 use_cache=cache is not None, logits_to_keep=1,
                                 **{self._cache_kwarg: cache})
                if row.slot is not None:
                    row.slot.length = row.start + len(row.token_ids)
                if row.want_logits:
                    outputs.append(out.logits[0, -1].float())
        return torch.stack(outputs) if outputs else torch.empty(0, self.vocab_size)

    def _classify(self, rows: Sequence[RowInput]) -> torch.Tensor:
        logits = []
        for row in rows:  # one by one: no padding, so no pad-token subtleties
            ids = torch.tensor([row.token_ids], dtype=torch.long)
            logits.append(self.model(input_ids=ids).logits[0].float())
        return torch.stack(logits)
