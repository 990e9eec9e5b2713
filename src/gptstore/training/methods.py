"""Training methods (which weights change): LoRA, full fine-tuning, head-only.

A method is a small class behind one interface, looked up by name in `METHODS`:

- `load_dtype`: the dtype the base is loaded in (frozen weights stay bf16 on CPUs with
  fast bf16, so no per-step cast; weights that train are fp32 masters);
- `prepare`: freeze / wrap the task's model (PEFT for LoRA and head-only);
- `set_mode`: train or eval mode (a frozen backbone stays in eval mode: no dropout);
- `describe`: what trains, for the lineage;
- `export`: write the folder that is published, and say its kind.

Storage, the contract with the serving engine:

- lora -> kind "adapter": a PEFT folder (`adapter_config.json` +
  `adapter_model.safetensors`), task_type CAUSAL_LM or SEQ_CLS; for classification the
  new `score` head is in `modules_to_save`.
- full -> kind "full": a complete transformers folder (config, safetensors in the
  base's dtype, tokenizer); a classifier's `config.architectures` is the
  `*ForSequenceClassification` class.
- head -> kind "adapter": a PEFT folder whose only trained module is the head
  (`modules_to_save`: `score`, or `lm_head` for causal-lm). PEFT refuses an adapter
  with no LoRA target, so it carries a rank-1 LoRA on one projection of the first
  layer with B = 0, frozen: an exact no-op of a few hundred parameters. Any PEFT
  loader (ours, plain `PeftModel.from_pretrained`, the serving engine) loads it, and
  the base is never copied.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from gptstore.errors import InvalidRequest
from gptstore.training.config import ALL_LINEAR, ATTENTION, AUTO, TrainConfig
from gptstore.training.tasks import Task, hf_model


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _upcast_trainable(model: nn.Module) -> None:
    """fp32 master copies of the weights that train (the frozen ones may stay bf16)."""
    for _, param in trainable_parameters(model):
        if param.dtype != torch.float32:
            param.data = param.data.float()


def _peft_default_target(model: nn.Module) -> list[str]:
    """PEFT's own default LoRA targets for the model's architecture (the attention
    projections: q_proj,v_proj for Llama, c_attn for GPT-2)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = str(getattr(hf_model(model).config, "model_type", ""))
    target = DEFAULTS.get(model_type)
    if not target:
        raise InvalidRequest(f"lora_target attention: PEFT has no default for {model_type!r} "
                             "models; name the modules (e.g. q_proj,v_proj) or use "
                             "all-linear", param="lora_target")
    return list(target)


def _linear_names(model: nn.Module, exclude: str) -> list[str]:
    """Names of the LoRA-able layers (Linear, transformers' Conv1D), the head excluded."""
    from transformers.pytorch_utils import Conv1D

    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear | Conv1D) and name.split(".")[-1] != exclude
            and "." in name]


class Method(ABC):
    """How a fine-tune changes the base: which weights train and what is stored."""

    name: ClassVar[str]
    kind: ClassVar[str]  # catalog version kind: "adapter" | "full"
    frozen_backbone: ClassVar[bool] = False

    def load_dtype(self, bf16: bool) -> torch.dtype:
        """Frozen weights in bf16 where matmuls are fast in bf16; fp32 otherwise."""
        return torch.bfloat16 if bf16 else torch.float32

    @abstractmethod
    def prepare(self, model: nn.Module, task: Task, cfg: TrainConfig) -> nn.Module:
        """Freeze / wrap the model so exactly the method's weights train."""

    def set_mode(self, model: nn.Module, task: Task, training: bool) -> None:
        model.train(training)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        trainable = sum(p.numel() for _, p in trainable_parameters(model))
        total = sum(p.numel() for p in model.parameters())
        return {"trainable_parameters": trainable, "total_parameters": total}

    @abstractmethod
    def export(self, model: nn.Module, out_dir: Path, *, base_ref: str, tokenizer: Any,
               restore_config: dict[str, float]) -> None:
        """Write the publishable folder of the trained model into `out_dir`."""


class LoraMethod(Method):
    """Low-rank adapters (PEFT) on chosen projections; the base stays frozen."""

    name = "lora"
    kind = "adapter"

    def prepare(self, model: nn.Module, task: Task, cfg: TrainConfig) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        target = None if cfg.lora_target == AUTO else list(cfg.lora_target)
        if target == [ALL_LINEAR]:  # every projection of every layer, the head excluded
            target = sorted({n.split(".")[-1] for n in _linear_names(model, task.head_name)})
        elif target == [ATTENTION]:
            target = _peft_default_target(model)
        config = LoraConfig(task_type=task.peft_task_type, r=cfg.lora_r,
                            lora_alpha=float(cfg.lora_alpha), lora_dropout=cfg.lora_dropout,
                            target_modules=target, bias="none")
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as exc:
            names = sorted({n.split(".")[-1] for n in _linear_names(model, task.head_name)})
            raise InvalidRequest(f"lora_target {','.join(target or [])} does not match the "
                                 f"base model's layers ({exc}); choose among "
                                 f"{','.join(names)}", param="lora_target") from exc
        _upcast_trainable(wrapped)
        return wrapped

    def describe(self, model: nn.Module) -> dict[str, Any]:
        info = super().describe(model)
        targets = model.peft_config["default"].target_modules  # type: ignore[index]
        info["lora_target"] = sorted(targets) if isinstance(targets, set | list) else targets
        return info

    def export(self, model: nn.Module, out_dir: Path, *, base_ref: str, tokenizer: Any,
               restore_config: dict[str, float]) -> None:
        _save_adapter(model, out_dir, base_ref)


class FullMethod(Method):
    """Every weight trains (fp32 master weights, bf16 autocast for the matmuls)."""

    name = "full"
    kind = "full"

    def load_dtype(self, bf16: bool) -> torch.dtype:
        return torch.float32

    def prepare(self, model: nn.Module, task: Task, cfg: TrainConfig) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def export(self, model: nn.Module, out_dir: Path, *, base_ref: str, tokenizer: Any,
               restore_config: dict[str, float]) -> None:
        """Save a copy: the live model keeps training after a mid-run snapshot, so
        neither its weights' dtype nor its (dropout) config is changed here."""
        hf = hf_model(model)
        # store in the base's dtype (bf16 for the built-in model): half the bytes
        dtype = getattr(hf.config, "dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, torch.float32)
        cast: dict[int, torch.Tensor] = {}  # one copy per storage: tied weights stay tied
        state = {name: cast.setdefault(t.data_ptr(), t.detach().to(dtype))
                 for name, t in hf.state_dict().items()}
        training_values = {key: getattr(hf.config, key) for key in restore_config}
        for key, value in restore_config.items():  # dropout is a training setting
            setattr(hf.config, key, value)
        try:
            hf.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        finally:
            for key, value in training_values.items():
                setattr(hf.config, key, value)
        tokenizer.save_pretrained(out_dir)


class HeadMethod(Method):
    """Only the output layer trains (the backbone frozen): the linear-probe baseline."""

    name = "head"
    kind = "adapter"
    frozen_backbone = True

    def prepare(self, model: nn.Module, task: Task, cfg: TrainConfig) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        # PEFT needs one LoRA target: a rank-1 no-op (B = 0, frozen) on the first
        # projection; the head itself is a full trainable copy in modules_to_save
        first = _linear_names(model, task.head_name)[0]
        config = LoraConfig(task_type=task.peft_task_type, r=1, lora_alpha=1.0,
                            lora_dropout=0.0, target_modules=[first],
                            modules_to_save=[task.head_name], bias="none")
        wrapped = get_peft_model(model, config)
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.requires_grad_(False)
        _upcast_trainable(wrapped)
        return wrapped

    def set_mode(self, model: nn.Module, task: Task, training: bool) -> None:
        model.eval()  # the frozen backbone never drops out (its output can be cached)
        task.head(model).train(training)

    def export(self, model: nn.Module, out_dir: Path, *, base_ref: str, tokenizer: Any,
               restore_config: dict[str, float]) -> None:
        _save_adapter(model, out_dir, base_ref)


def _save_adapter(model: nn.Module, out_dir: Path, base_ref: str) -> None:
    config = model.peft_config["default"]  # type: ignore[index]
    previous = config.base_model_name_or_path
    config.base_model_name_or_path = base_ref  # a store ref, not a temp folder
    try:
        with warnings.catch_warnings():  # PEFT looks for the base's config under that ref
            warnings.simplefilter("ignore")
            model.save_pretrained(out_dir)  # type: ignore[operator]
    finally:
        config.base_model_name_or_path = previous
    (Path(out_dir) / "README.md").unlink(missing_ok=True)  # the catalog writes the card


METHODS: dict[str, Method] = {m.name: m for m in (LoraMethod(), FullMethod(), HeadMethod())}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidRequest(f"unknown method {name!r}; use one of {', '.join(METHODS)}",
                             param="method") from None
