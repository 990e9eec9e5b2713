"""One loader for every store model a fine-tune can produce, and classification with it.

`load_for_inference(catalog, ref)` returns `(model, tokenizer, info)` in eval mode for:

- full causal-lm: `AutoModelForCausalLM` from the version's folder;
- full classification: `AutoModelForSequenceClassification` from the folder (labels
  in its config);
- adapter (lora or head), causal-lm: the base as `AutoModelForCausalLM` + `PeftModel`;
- adapter (lora or head), classification: the base as
  `AutoModelForSequenceClassification` with the version's label set (lineage
  `label_names`) + `PeftModel` (the trained `score` comes from `modules_to_save`).

`info` says the task, the label names (classification), the pad token the classifier
pools by and the context the model was trained with. `gptstore eval`, `gptstore
classify` and the serving engine use this loader; `classify` turns texts into labels
and probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.errors import InvalidRequest
from gptstore.training.tasks import amp, get_task, hf_model


@dataclass(frozen=True)
class InferenceInfo:
    """What a caller needs to know about a loaded model."""

    ref: str
    task: str
    kind: str
    method: str | None
    base: str | None
    label_names: list[str] | None
    pad_token_id: int
    max_length: int | None
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label_names(version: VersionInfo, config: Any | None) -> list[str] | None:
    names = version.lineage.get("label_names")
    if names:
        return [str(n) for n in names]
    id2label = getattr(config, "id2label", None) if config is not None else None
    if id2label and version.task == "classification":
        return [str(id2label[i]) for i in sorted(int(k) for k in id2label)]
    return None


def load_for_inference(catalog: Catalog, ref: str | VersionInfo, *, dtype: Any = None
                       ) -> tuple[Any, Any, InferenceInfo]:
    """Any store model (full or adapter, causal-lm or classification), ready to run."""
    from transformers import AutoConfig

    from gptstore.inference.loader import load_tokenizer_from, preferred_dtype

    version = catalog.resolve(ref) if isinstance(ref, str) else ref
    dtype = dtype or preferred_dtype()
    task = get_task(version.task)
    if version.kind == "adapter":
        if version.base_version_id is None:
            raise InvalidRequest(f"{version.ref} is an adapter without a base version")
        weights_version = catalog.get_version(version.base_version_id)
    else:
        weights_version = version
    if not any(f.path.endswith(".safetensors") for f in weights_version.files):
        raise InvalidRequest(f"{weights_version.ref} has no safetensors weights; re-import it")
    folder = catalog.snapshot(weights_version)
    tokenizer = load_tokenizer_from(catalog, version)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(folder)
    labels = _label_names(version, config)
    if version.task == "classification" and not labels:
        raise InvalidRequest(f"{version.ref} is a classifier without a label set; publish "
                             "it again with label_names in its lineage")
    pad_id = int(tokenizer.pad_token_id)
    if version.task == "classification" and weights_version.task == "classification":
        pad_id = int(getattr(config, "pad_token_id", None) or pad_id)
    model, _ = task.load_model(folder, dtype=dtype, dropout=0.0, label_names=labels,
                               pad_token_id=pad_id)
    if version.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, catalog.snapshot(version))
    model.to(dtype)  # PEFT keeps adapter weights in fp32: one dtype for every weight
    model.eval()
    hyper = version.lineage.get("hyperparameters") or {}
    max_length = hyper.get("max_length") if isinstance(hyper.get("max_length"), int) else None
    info = InferenceInfo(ref=version.ref, task=version.task, kind=version.kind,
                         method=version.lineage.get("method"), base=version.base,
                         label_names=labels, pad_token_id=pad_id, max_length=max_length,
                         dtype=str(dtype).removeprefix("torch."))
    return model, tokenizer, info


def classify(model: Any, tokenizer: Any, info: InferenceInfo, texts: Sequence[str], *,
             batch_size: int = 32) -> list[dict[str, Any]]:
    """Label and class probabilities for each text, in order."""
    if info.task != "classification" or not info.label_names:
        raise InvalidRequest(f"{info.ref} is a {info.task} model, not a classifier; "
                             "classify needs a model fine-tuned with --task classification",
                             param="model")
    from gptstore.data.batching import pad_batch, plan_eval_batches

    limit = info.max_length or 1024
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"][:limit] or
               [info.pad_token_id] for t in texts]
    results: list[dict[str, Any]] = [{} for _ in texts]
    bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
    hf = hf_model(model)
    with torch.no_grad(), amp(bf16):
        for indices in plan_eval_batches([len(e) for e in encoded], batch_size):
            arrays = pad_batch([encoded[i] for i in indices], info.pad_token_id)
            logits = hf(input_ids=torch.from_numpy(arrays["input_ids"]),
                        attention_mask=torch.from_numpy(arrays["attention_mask"])).logits
            probs = torch.softmax(logits.float(), dim=-1)  # [B, C]
            for row, index in enumerate(indices):
                p = probs[row].tolist()
                best = max(range(len(p)), key=p.__getitem__)
                results[index] = {"text": texts[index], "label": info.label_names[best],
                                  "probabilities": dict(zip(info.label_names, p, strict=True))}
    return results
