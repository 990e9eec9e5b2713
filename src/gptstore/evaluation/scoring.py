"""Scoring with a model's own forward pass (no sampling): next-token label scores for
zero-shot classification, and the summed NLL of target tokens for causal-LM metrics.

- `label_logits(model, prompts, token_ids)`: for each prompt, the LM's logits of the
  given vocabulary tokens at the next position: [N, C]. Computed as the decoder's last
  hidden state of the prompt's last real token times the LM head's rows for those
  tokens, which is exactly what a classification head initialised from those rows
  computes (`training/head_init.py`): zero-shot and step 0 of a fine-tune agree.
- `causal_lm_sums(model, examples)`: summed NLL (nats), scored tokens and correct
  argmax predictions over the examples' targets, batched by length.

Batches are right-padded (positions 0..len-1 for every real token, as in training) and
sorted by length. torch is imported here, so only the runner imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gptstore.data.batching import pad_batch, plan_eval_batches
from gptstore.data.types import IGNORE_INDEX, EncodedExample

Progress = Callable[[int, int], None]


def _hf(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder(model: Any) -> Any:
    """The decoder stack without its head (LlamaModel, GPT2Model, ...)."""
    hf = _hf(model)
    return getattr(hf, hf.base_model_prefix)


def label_logits(
    model: Any,
    prompts: Sequence[Sequence[int]],
    token_ids: Sequence[int],
    *,
    pad_id: int,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Next-token logits of `token_ids` after each prompt: [N, C] fp32, prompt order."""
    rows = _hf(model).get_output_embeddings().weight[list(token_ids)]  # [C, H]
    out = torch.empty(len(prompts), len(token_ids), dtype=torch.float32)
    done = 0
    with torch.no_grad():
        for indices in plan_eval_batches([len(p) for p in prompts], batch_size):
            arrays = pad_batch([prompts[i] for i in indices], pad_id)
            mask = torch.from_numpy(arrays["attention_mask"])
            hidden = decoder(model)(input_ids=torch.from_numpy(arrays["input_ids"]),
                                    attention_mask=mask).last_hidden_state  # [B, T, H]
            last = mask.sum(dim=1) - 1  # right padding: [B]
            pooled = hidden[torch.arange(hidden.shape[0]), last]  # [B, H]
            out[torch.tensor(indices)] = (pooled @ rows.T.to(pooled.dtype)).float()
            done += len(indices)
            if progress is not None:
                progress(done, len(prompts))
    return out


@dataclass(frozen=True)
class NllSums:
    nll_sum: float  # nats, over every scored token
    tokens: int
    correct: int  # argmax predictions equal to the target


def causal_lm_sums(
    model: Any,
    examples: Sequence[EncodedExample],
    *,
    pad_id: int,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> NllSums:
    """Summed NLL of every example's target tokens (labels != -100; position t predicts
    token t+1, as in training)."""
    head = _hf(model).get_output_embeddings()
    nll, tokens, correct, done = 0.0, 0, 0, 0
    with torch.no_grad():
        for indices in plan_eval_batches([e.num_tokens for e in examples], batch_size):
            batch = [examples[i] for i in indices]
            arrays = pad_batch([e.input_ids for e in batch], pad_id,
                               labels=[e.labels if e.labels is not None else e.input_ids
                                       for e in batch])
            hidden = decoder(model)(
                input_ids=torch.from_numpy(arrays["input_ids"]),
                attention_mask=torch.from_numpy(arrays["attention_mask"])).last_hidden_state
            targets = torch.from_numpy(arrays["labels"])[:, 1:]  # [B, T-1]
            keep = targets != IGNORE_INDEX
            logits = head(hidden[:, :-1][keep]).float()  # [N, V]: only scored positions
            wanted = targets[keep]
            nll += float(F.cross_entropy(logits, wanted, reduction="sum"))
            tokens += int(wanted.numel())
            correct += int((logits.argmax(-1) == wanted).sum())
            done += len(indices)
            if progress is not None:
                progress(done, len(examples))
    return NllSums(nll, tokens, correct)


def target_ids(example: EncodedExample) -> list[int]:
    """The tokens an example's NLL is summed over (what bits per byte divides by)."""
    labels = example.labels if example.labels is not None else example.input_ids
    return [token for token, label in zip(example.input_ids[1:], labels[1:], strict=True)
            if label != IGNORE_INDEX]
