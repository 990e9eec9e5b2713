"""Loading store models into torch: safetensors only, memory-mapped, bf16 where the CPU
has native bf16 matrix units.

This is the one place that turns a catalog version into live `transformers` objects;
the engine, the training loop and the CLI all come through here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.errors import InvalidRequest
from gptstore.settings import Settings


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX, where bf16 matmuls run ~3x fp32 (NOTES.md: 709 vs 231
    GFLOP/s at 2048^2).

    AVX-512 BF16 alone is not enough: on a Sapphire Rapids VM without AMX enabled
    (oneDNN reports "AVX 10.1") bf16 matmuls measured 2x *slower* than fp32 (160 vs 321
    GFLOP/s at 2048 x 576 x 1536) and the decode GEMVs no faster, so fp32 is chosen there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def engine_precision(setting: str) -> dict[str, str | None]:
    """`EngineConfig` fields for the `GPTSTORE_INFERENCE_DTYPE` setting (with int4 the
    config itself sets the bf16 dtype its kernel needs)."""
    if setting == "int4":
        return {"dtype": None, "quantize": "int4"}
    return {"dtype": None if setting == "auto" else setting, "quantize": None}


def preferred_dtype() -> Any:
    import torch

    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@dataclass
class LoadedModel:
    version: VersionInfo
    folder: Path  # the snapshot folder of the version (of its base, for adapters)
    model: Any
    tokenizer: Any


def _check_weights(version: VersionInfo) -> None:
    if not any(f.path.endswith(".safetensors") for f in version.files):
        raise InvalidRequest(f"{version.ref} has no safetensors weights; re-import it")


def model_folder(catalog: Catalog, ref: str | VersionInfo) -> Path:
    version = catalog.resolve(ref) if isinstance(ref, str) else ref
    return catalog.snapshot(version)


def load_tokenizer_from(catalog: Catalog, ref: str | VersionInfo) -> Any:
    """The version's tokenizer (its base's, for adapters without one), with
    `model_max_length` capped at the model's context length."""
    from transformers import AutoTokenizer

    version = catalog.resolve(ref) if isinstance(ref, str) else ref
    if version.kind == "adapter" and not version.has_file("tokenizer.json"):
        version = catalog.get_version(version.base_version_id)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(catalog.snapshot(version))
    context = version.lineage.get("context_length")
    if isinstance(context, int) and context < tokenizer.model_max_length:
        tokenizer.model_max_length = context
    return tokenizer


def load_tokenizer(settings: Settings, name: str) -> Any:
    """The tokenizer of store model `name` (for data validation)."""
    catalog = Catalog(settings)
    try:
        return load_tokenizer_from(catalog, name)
    finally:
        catalog.close()


def load_causal_lm(catalog: Catalog, ref: str | VersionInfo, *, dtype: Any = None) -> LoadedModel:
    """A full causal-LM version as a transformers model in eval mode.

    Weights are read from safetensors only (`use_safetensors=True`), which transformers
    memory-maps; `dtype` defaults to bf16 on CPUs with fast bf16, else fp32.
    """
    from transformers import AutoModelForCausalLM

    version = catalog.resolve(ref) if isinstance(ref, str) else ref
    if version.kind != "full":
        raise InvalidRequest(
            f"{version.ref} is a {version.kind} version; load it with its base model"
        )
    _check_weights(version)
    folder = catalog.snapshot(version)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype or preferred_dtype(), use_safetensors=True
    )
    model.eval()
    tokenizer = load_tokenizer_from(catalog, version)
    return LoadedModel(version=version, folder=folder, model=model, tokenizer=tokenizer)


def load_with_adapter(catalog: Catalog, version: VersionInfo, *, dtype: Any = None) -> LoadedModel:
    """An adapter version on top of its base, as a `peft.PeftModel` (for export and eval)."""
    from peft import PeftModel

    if version.base_version_id is None:
        raise InvalidRequest(f"{version.ref} is an adapter without a base version")
    base = catalog.get_version(version.base_version_id)
    if version.task == "classification":
        loaded = load_classifier_for_adapter(catalog, version, base, dtype=dtype)
    else:
        loaded = load_causal_lm(catalog, base, dtype=dtype)
    adapter_folder = catalog.snapshot(version)
    model = PeftModel.from_pretrained(loaded.model, adapter_folder)
    model.eval()
    return LoadedModel(version=version, folder=adapter_folder, model=model,
                       tokenizer=loaded.tokenizer)


def export_merged(catalog: Catalog, version: VersionInfo, out_dir: Path) -> None:
    """Write adapter + base merged into one full Hugging Face folder, with the card."""
    import torch

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidRequest(f"export folder {out_dir} is not empty: choose a new or empty folder",
                             param="dir")
    loaded = load_with_adapter(catalog, version, dtype=torch.float32)
    merged = loaded.model.merge_and_unload()
    if _head_untied(merged):  # a trained LM head (head-only fine-tune) of a tied model
        merged.config.tie_word_embeddings = False
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_bytes(catalog.read_file(version, "README.md"))
    catalog.count_download(version.model)


def _head_untied(model: Any) -> bool:
    """True when the model's config ties the LM head to the embeddings but the weights
    differ (saving would silently drop the trained head)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or not getattr(model.config, "tie_word_embeddings", False):
        return False
    return out.weight.data_ptr() != inp.weight.data_ptr()


def load_classifier_for_adapter(catalog: Catalog, version: VersionInfo, base: VersionInfo, *,
                                dtype: Any = None) -> LoadedModel:
    """The base of a classification adapter as `*ForSequenceClassification` with the
    adapter's label set (lineage `label_names`) and pad token; its `score` head is a
    placeholder until the adapter's `modules_to_save` replaces it."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    _check_weights(base)
    labels = [str(n) for n in version.lineage.get("label_names") or []]
    if not labels:
        raise InvalidRequest(f"{version.ref} is a classifier without label_names in its lineage")
    tokenizer = load_tokenizer_from(catalog, version)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    folder = catalog.snapshot(base)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score newly initialised" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, dtype=dtype or preferred_dtype(), use_safetensors=True,
            num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)}, pad_token_id=pad)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    return LoadedModel(version=base, folder=folder, model=model, tokenizer=tokenizer)


def load_classifier_base(catalog: Catalog, version: VersionInfo, *, dtype: Any = None) -> Any:
    """A full sequence-classification version as a transformers model in eval mode."""
    from transformers import AutoModelForSequenceClassification

    _check_weights(version)
    model = AutoModelForSequenceClassification.from_pretrained(
        catalog.snapshot(version), dtype=dtype or preferred_dtype(), use_safetensors=True
    )
    model.eval()
    return model


_HEAD_MODULES = {"score", "classifier"}


def _merge_to_serve(catalog: Catalog, version: VersionInfo) -> bool:
    """Whether a PEFT adapter saves whole modules other than a classifier head."""
    import json

    if not version.has_file("adapter_config.json"):
        return False
    config = json.loads(catalog.read_file(version, "adapter_config.json"))
    saved = set(config.get("modules_to_save") or [])
    return bool(saved - _HEAD_MODULES)


def store_resolver(catalog: Catalog, *, dtype: str | None = None) -> Any:
    """The engine's resolver over the store: a model name -> `ModelSpec`.

    A full version is its own base (keyed by manifest digest, so two names for the same
    bytes share memory); an adapter version points at its base version's weights plus
    its own PEFT folder, so all adapters of one base share one copy of it. `dtype`
    ("bfloat16" / "float32") overrides `preferred_dtype()`; weights load straight in it.
    """
    import torch

    from gptstore.inference.types import ModelSpec

    torch_dtype = getattr(torch, dtype) if dtype else None

    def resolve(name: str) -> ModelSpec:
        version = catalog.resolve(name)
        task = version.task
        labels = version.lineage.get("label_names")
        if version.kind == "adapter" and _merge_to_serve(catalog, version):
            # The engine applies LoRA deltas and classifier heads per request; an adapter
            # that replaces other whole modules (a trained LM head) is served merged, as
            # a model of its own.
            def load_merged() -> tuple[Any, Any]:
                from gptstore.training.loading import load_for_inference

                model, tokenizer, _ = load_for_inference(catalog, version, dtype=torch_dtype)
                return model.merge_and_unload(), tokenizer

            return ModelSpec(base_key=version.manifest_digest, base_loader=load_merged,
                             task=task, label_names=labels)
        if version.kind == "adapter":
            if version.base_version_id is None:
                raise InvalidRequest(f"{version.ref} is an adapter without a base version")
            base = catalog.get_version(version.base_version_id)
            adapter_dir: Path | None = catalog.snapshot(version)
        else:
            base, adapter_dir = version, None

        def load_base() -> tuple[Any, Any]:
            if base.task == "classification":
                return (load_classifier_base(catalog, base, dtype=torch_dtype),
                        load_tokenizer_from(catalog, base))
            loaded = load_causal_lm(catalog, base, dtype=torch_dtype)
            return loaded.model, loaded.tokenizer

        return ModelSpec(base_key=base.manifest_digest, base_loader=load_base,
                         adapter_dir=adapter_dir, task=task, label_names=labels)

    return resolve
