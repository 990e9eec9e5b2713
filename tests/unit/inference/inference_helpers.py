"""Helpers shared by the inference tests (references computed with transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptstore.inference import ModelSpec


def load_causal(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def hf_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    """Reference: transformers generate, greedy, one prompt alone (no padding)."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def causal_spec(folder: Path, key: str | None = None, adapter: Path | None = None) -> ModelSpec:
    return ModelSpec(base_key=key or str(folder), base_loader=lambda: load_causal(folder),
                     adapter_dir=adapter)
