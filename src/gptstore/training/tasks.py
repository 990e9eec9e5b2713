"""Training tasks (what the model predicts): causal LM and sequence classification.

A task is a small class behind one interface, looked up by its name (from `gptstore.tasks`) in
`TASK_REGISTRY`:

- `head_name` / `head`: the task's output layer (the LM head, or the linear `score`
  head over the hidden state of the last non-padding token that
  `AutoModelForSequenceClassification` adds); the model itself comes from the one
  loader, `inference.loader.load_version`, which knows each task's Auto class;
- `make_batch`: examples -> padded tensors (`data/batching.py` does the padding);
- `forward`: one micro-batch -> `Terms` (summed loss and what the metrics need);
- `metrics`: accumulated `Terms` -> the task's validation metrics.

Speed decisions live here: the causal-LM loss runs the LM head only on the positions
that carry a target (prompts and padding cost no vocabulary projection), the loss is
taken in fp32 over bf16 activations, and a frozen backbone runs under `no_grad`.

Does not know optimisers, methods, files or how a model is loaded.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from gptstore.data.batching import pad_batch
from gptstore.data.types import IGNORE_INDEX, EncodedExample
from gptstore.errors import InvalidRequest
from gptstore.tasks import CAUSAL_LM, CLASSIFICATION

#: config attributes that are dropout probabilities, by architecture family
DROPOUT_KEYS = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop",
                "attn_pdrop", "dropout", "hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclass
class Batch:
    """One micro-batch as tensors. `features` replaces the tokens for a cached head-only
    classifier (the backbone's pooled output, computed once)."""

    input_ids: torch.Tensor | None  # [B, T] int64
    attention_mask: torch.Tensor | None  # [B, T] 1 = real token
    labels: torch.Tensor  # causal-lm [B, T] unshifted, -100 = no loss; classification [B]
    n_tokens: int  # non-padding input tokens (the throughput unit)
    n_targets: int  # loss terms: target tokens (causal-lm) or examples (classification)
    features: torch.Tensor | None = None  # [B, H]


@dataclass
class Terms:
    """What one forward pass yields: the summed loss and the metric counts."""

    loss_sum: torch.Tensor  # scalar fp32, sum over the batch's loss terms
    count: int  # number of loss terms
    correct: int = 0
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)


@dataclass
class Stats:
    """Terms accumulated over an evaluation."""

    loss: float = 0.0
    count: int = 0
    correct: int = 0
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)

    def add(self, terms: Terms) -> None:
        self.loss += float(terms.loss_sum)
        self.count += terms.count
        self.correct += terms.correct
        self.predictions += terms.predictions
        self.targets += terms.targets


# ------------------------------------------------------------------ model internals


def hf_model(model: nn.Module) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def backbone(model: nn.Module) -> Any:
    """The decoder stack without any head (LlamaModel, GPT2Model, ...)."""
    hf = hf_model(model)
    return getattr(hf, hf.base_model_prefix)


def amp(bf16: bool) -> torch.autocast:
    """bf16 autocast on the CPU (matmuls in bf16, reductions kept in fp32); used where
    this machine measured bf16 faster (inference/precision.py) or the run asks for it."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


# ------------------------------------------------------------------------- the tasks


class Task(ABC):
    """One kind of prediction: its output layer, batches, loss and metrics."""

    name: ClassVar[str]
    #: PEFT's task type for LoRA on this task
    peft_task_type: ClassVar[str]
    #: attribute of the transformers model that holds the output layer
    head_name: ClassVar[str]
    #: metric name -> True when higher is better
    metric_directions: ClassVar[dict[str, bool]]
    #: head-only training may compute the backbone's output once and reuse it
    can_cache_features: ClassVar[bool] = False

    def make_batch(self, examples: Sequence[EncodedExample], pad_id: int) -> Batch:
        arrays = pad_batch([e.input_ids for e in examples], pad_id,
                           labels=self._token_labels(examples))
        ids = torch.from_numpy(arrays["input_ids"])
        mask = torch.from_numpy(arrays["attention_mask"])
        labels, n_targets = self._labels(examples, arrays)
        return Batch(ids, mask, labels, n_tokens=int(mask.sum()), n_targets=n_targets)

    def _token_labels(self, examples: Sequence[EncodedExample]) -> list[list[int]] | None:
        return None

    @abstractmethod
    def _labels(self, examples: Sequence[EncodedExample],
                arrays: dict[str, Any]) -> tuple[torch.Tensor, int]: ...

    @abstractmethod
    def forward(self, model: nn.Module, batch: Batch, *, frozen_backbone: bool = False,
                head_dropout: float = 0.0) -> Terms:
        """Loss terms of one micro-batch (train or eval: the model's mode decides)."""

    @abstractmethod
    def metrics(self, stats: Stats) -> dict[str, float]:
        """Validation metrics from accumulated terms."""

    def head(self, model: nn.Module) -> nn.Module:
        return getattr(hf_model(model), self.head_name)

class CausalLMTask(Task):
    """Generation, chat, QA, translation, code: the LM head, loss on the target tokens."""

    name = CAUSAL_LM
    peft_task_type = "CAUSAL_LM"
    head_name = "lm_head"
    metric_directions: ClassVar[dict[str, bool]] = {"loss": False, "perplexity": False,
                                                    "token_accuracy": True}

    def head(self, model: nn.Module) -> nn.Module:
        return hf_model(model).get_output_embeddings()

    def _token_labels(self, examples: Sequence[EncodedExample]) -> list[list[int]]:
        return [e.labels if e.labels is not None else e.input_ids for e in examples]

    def _labels(self, examples: Sequence[EncodedExample],
                arrays: dict[str, Any]) -> tuple[torch.Tensor, int]:
        labels = torch.from_numpy(arrays["labels"])
        return labels, int((labels[:, 1:] != IGNORE_INDEX).sum())

    def forward(self, model: nn.Module, batch: Batch, *, frozen_backbone: bool = False,
                head_dropout: float = 0.0) -> Terms:
        assert batch.input_ids is not None
        # 1. hidden states of the decoder stack, no LM head yet: [B, T, H]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_backbone):
            hidden = backbone(model)(input_ids=batch.input_ids,
                                     attention_mask=batch.attention_mask).last_hidden_state
        # 2. position t predicts token t+1; keep only positions that carry a target, so
        #    the vocabulary projection (the largest matmul of a small model) skips prompts
        #    and padding: [B, T-1] -> [N]
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]  # [N, H]
        if head_dropout and model.training:
            selected = F.dropout(selected, head_dropout)
        # 3. logits in fp32 for a stable softmax over the vocabulary: [N, V]
        logits = self.head(model)(selected).float()
        wanted = targets[keep]
        loss_sum = F.cross_entropy(logits, wanted, reduction="sum")
        correct = int((logits.detach().argmax(-1) == wanted).sum())
        return Terms(loss_sum, count=int(wanted.numel()), correct=correct)

    def metrics(self, stats: Stats) -> dict[str, float]:
        loss = stats.loss / max(1, stats.count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "token_accuracy": stats.correct / max(1, stats.count)}


class ClassificationTask(Task):
    """Sequence classification: a new linear `score` head over the last real token."""

    name = CLASSIFICATION
    peft_task_type = "SEQ_CLS"
    head_name = "score"
    metric_directions: ClassVar[dict[str, bool]] = {"loss": False, "accuracy": True,
                                                    "macro_f1": True}
    can_cache_features = True

    def _labels(self, examples: Sequence[EncodedExample],
                arrays: dict[str, Any]) -> tuple[torch.Tensor, int]:
        labels = torch.tensor([e.label for e in examples], dtype=torch.int64)
        return labels, len(examples)

    def features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Hidden state of each row's last real token (what `score` sees): [B, H] fp32."""
        assert batch.input_ids is not None and batch.attention_mask is not None
        hidden = backbone(model)(input_ids=batch.input_ids,
                                 attention_mask=batch.attention_mask).last_hidden_state
        last = batch.attention_mask.sum(dim=1) - 1  # right padding: [B]
        return hidden[torch.arange(hidden.shape[0]), last].float()

    def forward(self, model: nn.Module, batch: Batch, *, frozen_backbone: bool = False,
                head_dropout: float = 0.0) -> Terms:
        if batch.features is not None or frozen_backbone:
            # head only: pooled backbone output (cached or computed without gradients)
            if batch.features is not None:
                pooled = batch.features  # [B, H]
            else:
                with torch.no_grad():
                    pooled = self.features(model, batch)
            head = self.head(model)
            if head_dropout and head.training:
                pooled = F.dropout(pooled, head_dropout)
            logits = head(pooled.to(_dtype_of(head)))  # [B, C]
        else:
            # the transformers forward pools the last non-padding token itself (the same
            # path a saved model takes at inference); head dropout is a pre-hook on score
            logits = hf_model(model)(input_ids=batch.input_ids,
                                     attention_mask=batch.attention_mask).logits  # [B, C]
        logits = logits.float()
        loss_sum = F.cross_entropy(logits, batch.labels, reduction="sum")
        predictions = logits.detach().argmax(-1)
        return Terms(loss_sum, count=batch.n_targets,
                     correct=int((predictions == batch.labels).sum()),
                     predictions=predictions.tolist(), targets=batch.labels.tolist())

    def add_head_dropout(self, model: nn.Module, p: float) -> None:
        """Dropout on the score head's input while training (a hook, so the saved model
        keeps transformers' plain `score` layer)."""
        if p <= 0:
            return

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (F.dropout(args[0], p, training=module.training), *args[1:])

        self.head(model).register_forward_pre_hook(hook)

    def metrics(self, stats: Stats) -> dict[str, float]:
        from sklearn.metrics import f1_score

        labels = sorted(set(stats.targets) | set(stats.predictions))
        f1 = f1_score(stats.targets, stats.predictions, labels=labels, average="macro",
                      zero_division=0) if stats.targets else 0.0
        return {"loss": stats.loss / max(1, stats.count),
                "accuracy": stats.correct / max(1, stats.count), "macro_f1": float(f1)}


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


TASK_REGISTRY: dict[str, Task] = {task.name: task for task in (CausalLMTask(),
                                                               ClassificationTask())}


def get_task(name: str) -> Task:
    try:
        return TASK_REGISTRY[name]
    except KeyError:
        raise InvalidRequest(f"unknown task {name!r}; use one of {', '.join(TASK_REGISTRY)}",
                             param="task") from None
