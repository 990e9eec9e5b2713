"""A classification head that starts from what the base model already knows.

A causal LM already classifies zero-shot: after a text, its next-token logits for
" positive" and " negative" say which it expects. A `score` head over the same last
hidden state whose row c is the LM head's row of label c's verbaliser token computes
exactly those logits, so the fine-tune's step 0 scores what zero-shot scores
(`evaluation.scoring.label_logits`, tested), and training starts from there instead of
from chance. A fresh random head throws that away: on a few hundred examples the run
can end below the base model's zero-shot accuracy.

`init_head_from_verbalizers(model, folder, tokenizer, labels)` does it where every
label is a word whose first token differs from the others' (the rule of
`evaluation.verbalizers`); other label sets ("0" / "1", "LABEL_3") keep the fresh head.
The LM head's rows come from the live model when it ties them to the input embeddings
(SmolLM2, GPT-2), else from the base's safetensors (a sequence-classification model
built from a causal LM drops its `lm_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gptstore.evaluation.verbalizers import verbalizer_token_ids

VERBALIZERS = "verbalizers"
FRESH = "fresh"


def init_head_from_verbalizers(model: Any, folder: Path, tokenizer: Any,
                               labels: Sequence[str]) -> str:
    """Copy the LM head's verbaliser rows into the `score` head of `model` (a
    transformers `*ForSequenceClassification`, before any PEFT wrapping). Returns how
    the head starts: "verbalizers" or "fresh"."""
    token_ids = verbalizer_token_ids(tokenizer, labels, leading_space=True)
    head = getattr(model, "score", None)
    if token_ids is None or not isinstance(head, torch.nn.Linear):
        return FRESH
    rows = lm_head_rows(model, Path(folder), token_ids)
    if rows is None:
        return FRESH
    with torch.no_grad():
        head.weight.copy_(rows.to(head.weight.dtype))  # [C, H]
        if head.bias is not None:
            head.bias.zero_()
    return VERBALIZERS


def lm_head_rows(model: Any, folder: Path, token_ids: Sequence[int]) -> torch.Tensor | None:
    """Rows `token_ids` of the base's LM head: [C, H], or None when it has none."""
    if getattr(model.config, "tie_word_embeddings", False):
        return model.get_input_embeddings().weight[list(token_ids)].detach().clone()
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            keys = f.keys()  # a safe_open handle is not iterable
            name = next((k for k in keys if k == "lm_head.weight"
                         or k.endswith(".lm_head.weight")), None)
            if name is not None:
                weight = f.get_slice(name)
                return torch.stack([weight[int(t)] for t in token_ids])
    return None
