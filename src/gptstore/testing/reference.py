"""Reference implementations that the fast paths are checked against in tests.

`classify(loaded, texts)`: label probabilities computed by the plain transformers
forward pass of a model from the one loader (`inference.loader.load_version`), batched
by length. The serving engine's own classifier (`Engine.classify`) must match it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gptstore.errors import InvalidRequest


def classify(loaded: Any, texts: Sequence[str], *, batch_size: int = 32
             ) -> list[dict[str, Any]]:
    """Label and class probabilities for each text, in order."""
    import torch

    from gptstore.data.batching import pad_batch, plan_eval_batches
    from gptstore.training.tasks import amp, hf_model

    if not loaded.is_classifier or not loaded.label_names:
        raise InvalidRequest(f"{loaded.version.ref} is a {loaded.task} model, not a "
                             "classifier; classify needs a model fine-tuned with --task "
                             "classification", param="model")
    limit = loaded.max_length or 1024
    encoded = [loaded.tokenizer(t, add_special_tokens=True)["input_ids"][:limit] or
               [loaded.pad_token_id] for t in texts]
    results: list[dict[str, Any]] = [{} for _ in texts]
    hf = hf_model(loaded.model)
    with torch.no_grad(), amp(loaded.dtype == torch.bfloat16):
        for indices in plan_eval_batches([len(e) for e in encoded], batch_size):
            arrays = pad_batch([encoded[i] for i in indices], loaded.pad_token_id)
            logits = hf(input_ids=torch.from_numpy(arrays["input_ids"]),
                        attention_mask=torch.from_numpy(arrays["attention_mask"])).logits
            probs = torch.softmax(logits.float(), dim=-1)  # [B, C]
            for row, index in enumerate(indices):
                p = probs[row].tolist()
                best = max(range(len(p)), key=p.__getitem__)
                results[index] = {"text": texts[index], "label": loaded.label_names[best],
                                  "probabilities": dict(zip(loaded.label_names, p,
                                                            strict=True))}
    return results
