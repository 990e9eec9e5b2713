"""The fallback runner: any `transformers` causal LM through its own forward.

For architectures without a hand-written decoder (Phi, Gemma, Qwen3, ...). Each
sequence keeps its own `DynamicCache`; a step runs the model once per row (rows of
different lengths cannot share a `DynamicCache` without padding bookkeeping that would
cost more than it saves on a CPU). Correct for every architecture transformers
supports, but without the batching speed-up. Classification models run text by text.

LoRA adapters (causal LM): every PEFT target module is a linear layer of the model by
its own name, so a site here is that module (`site_of`), and the adapter's `x A^T B^T`
is added to the module's output by a forward hook, registered on the first adapter
that targets it. The hook reads the adapter of the row being run (rows run one at a
time), so a step may mix adapters and the base, as on the hand-written runners.
Why hooks rather than PEFT's own layers: PEFT would wrap the shared base in place and
switch adapters through module state; the hook adds the same delta (tested against
PEFT) without changing the model, and adapters load through the one loader
(`lora.load_lora_adapter`), under the same memory budget as everywhere else.
A classifier adapter (its own `score` head) is refused here: merge it to serve it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from gptstore.errors import InvalidRequest
from gptstore.inference.kv_cache import Slot
from gptstore.inference.lora import LoraAdapter, LoraBatch, SiteTarget
from gptstore.inference.models.base import Head, RowInput, Runner
from gptstore.tasks import CLASSIFIER_SUFFIX


class _CacheSlot(Slot):
    cache: Any = None


class GenericRunner(Runner):
    supports_lora = True

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
            or type(model).__name__.endswith(CLASSIFIER_SUFFIX)
        # transformers 5 renamed `past_key_values` to `cache`; use whichever it takes.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._modules = dict(model.named_modules())
        self._hooked: set[str] = set()
        self._adapter: LoraAdapter | None = None  # of the row being run

    # -- LoRA -----------------------------------------------------------------------------

    def site_of(self, module: str) -> SiteTarget | None:
        """A PEFT target module is a site of its own: the linear layer of that name."""
        layer = self._modules.get(module)
        width = getattr(layer, "out_features", None) or getattr(layer, "nf", None)
        if layer is None or not isinstance(width, int):
            return None
        if module not in self._hooked:
            layer.register_forward_hook(self._lora_hook(module))
            self._hooked.add(module)
        return SiteTarget(layer=-1, site=module, offset=0, width=width, total=width)

    def _lora_hook(self, module: str) -> Any:
        def hook(_layer: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
            adapter = self._adapter
            site = adapter.sites.get((-1, module)) if adapter is not None else None
            if site is None:
                return
            x = args[0]
            # [B, T, in] -> [B*T, in]; the output is fresh and contiguous: added in place
            site.add_delta(x.reshape(-1, x.shape[-1]), output.view(-1, output.shape[-1]))

        return hook

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
        if head is not None:
            raise InvalidRequest(
                "a classifier adapter on this architecture cannot be served per request "
                f"({type(self.model).__name__} runs on the generic runner); merge the "
                "adapter into its base to serve it", param="model")
        outputs = []
        with torch.inference_mode():
            if all(r.slot is None for r in rows) and self.is_classifier and lora is None:
                return self._classify(rows)
            try:
                first_token = 0
                for row in rows:
                    # the row's adapter, for the LoRA hooks (None: the base alone)
                    self._adapter = lora.token_adapters[first_token] if lora else None
                    first_token += len(row.token_ids)
                    outputs += self._run_row(row)
            finally:
                self._adapter = None
        return torch.stack(outputs) if outputs else torch.empty(0, self.vocab_size)

    def _run_row(self, row: RowInput) -> list[torch.Tensor]:
        """One row through the model with its own cache: its logits (RowInput.n_outputs)."""
        ids = torch.tensor([row.token_ids], dtype=torch.long)
        positions = torch.arange(row.start, row.start + len(row.token_ids))[None]
        cache = row.slot.cache if row.slot is not None else None  # type: ignore[attr-defined]
        out = self.model(input_ids=ids, position_ids=positions, use_cache=cache is not None,
                         logits_to_keep=0 if row.all_logits else 1,
                         **{self._cache_kwarg: cache})
        if row.slot is not None:
            row.slot.length = row.start + len(row.token_ids)
        if row.all_logits:
            return list(out.logits[0].float())
        return [out.logits[0, -1].float()] if row.want_logits else []

    def _classify(self, rows: Sequence[RowInput]) -> torch.Tensor:
        logits = []
        for row in rows:  # one by one: no padding, so no pad-token subtleties
            ids = torch.tensor([row.token_ids], dtype=torch.long)
            logits.append(self.model(input_ids=ids).logits[0].float())
        return torch.stack(logits)
