"""The one loader: a store version becomes a live transformers model here, and nowhere else.

`load_version(catalog, ref)` loads any version the store can hold, the way PEFT's
`AutoPeftModel` picks its class from the saved config:

- full causal-lm: `AutoModelForCausalLM` from the version's folder;
- full classification: `AutoModelForSequenceClassification` (labels in its config);
- adapter (LoRA or head), causal-lm: the base as `AutoModelForCausalLM` + `PeftModel`;
- adapter, classification: the base as `AutoModelForSequenceClassification` with the
  adapter's label set (lineage `label_names`) + `PeftModel` (the trained `score` comes
  from `modules_to_save`).

Training builds its starting model through the same function (a base loaded for a task,
with its own label set, dropout and attention set through `configure` and
`attn_implementation`); the engine's base loaders (`inference/store.py`), `gptstore
eval` and the merged export come through here too. Weights are read from safetensors
only (`use_safetensors=True`, memory-mapped by transformers): no pickle is ever loaded.

Knows nothing of training (optimisers, methods, checkpoints) and nothing of HTTP.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.errors import InvalidRequest
from gptstore.settings import Settings
from gptstore.tasks import CAUSAL_LM, CLASSIFICATION, TaskName

#: the transformers Auto class of each task's models
AUTO_CLASSES: dict[TaskName, str] = {
    CAUSAL_LM: "AutoModelForCausalLM",
    CLASSIFICATION: "AutoModelForSequenceClassification",
}

#: modules a PEFT adapter may save whole and the engine still applies per request
#: (a classifier head); an adapter saving any other module is served merged
HEAD_MODULES = frozenset({"score", "classifier"})


def preferred_dtype(settings: Settings | None = None) -> Any:
    """The dtype served models load in when nobody says: bf16 where this machine's
    serving matmuls measured faster in it (`precision.py`), else fp32. The
    measurement is cached in the store home of `settings`."""
    import torch

    from gptstore.inference.precision import machine_profile

    home = (settings or Settings()).home
    return torch.bfloat16 if machine_profile(home).serving == "bf16" else torch.float32


def auto_class(task: TaskName) -> Any:
    """The transformers Auto class that builds `task`'s models."""
    import transformers

    try:
        return getattr(transformers, AUTO_CLASSES[task])
    except KeyError:
        raise InvalidRequest(f"unknown task {task!r}; use one of {', '.join(AUTO_CLASSES)}",
                             param="task") from None


@dataclass(frozen=True)
class LoadedVersion:
    """A store version as a live model, and what a caller needs to run it."""

    version: VersionInfo  # the version asked for
    weights: VersionInfo  # the version whose weights were read (the base, for adapters)
    folder: Path  # the snapshot folder of `weights`
    model: Any  # in eval mode; a `peft.PeftModel` for adapters
    tokenizer: Any  # with a pad token (eos when the model has none)
    task: TaskName
    label_names: list[str] | None  # classification: the outputs, in order
    pad_token_id: int  # the token a classifier pools up to (transformers' rule)
    max_length: int | None  # the context the version was trained with, if recorded
    dtype: Any  # torch dtype of every weight

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION


def weights_version(catalog: Catalog, version: VersionInfo) -> VersionInfo:
    """The version holding the weights: the version itself, or an adapter's base."""
    if version.kind != "adapter":
        return version
    if version.base_version_id is None:
        raise InvalidRequest(f"{version.ref} is an adapter without a base version")
    return catalog.get_version(version.base_version_id)


class _CollectorPause:
    """Python's cyclic garbage collector off while any thread loads (see
    `collection_paused`), on again when the last one is done, if it was on before."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loads = 0
        self.resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self.lock:
            if self.loads == 0:
                self.resume = gc.isenabled()
                gc.disable()
            self.loads += 1
        try:
            yield
        finally:
            with self.lock:
                self.loads -= 1
                if self.loads == 0 and self.resume:
                    gc.enable()


#: Loading a model imports torch's and transformers' modules and builds their configs,
#: tokenizers and weights: hundreds of thousands of objects, few of them garbage, and
#: each 700 allocations start a collection that, every so often, scans them all. With
#: the collector off meanwhile, `gptstore generate`'s imports and load took ~2.6 s
#: against ~3.7 on a 2-core Zen 4 EPYC (docs/design.md, "Layout and dependencies").
#: Reference counting still frees what it can; cycles made meanwhile wait for the next
#: collection after it.
collection_paused = _CollectorPause()


def load_tokenizer(catalog: Catalog, ref: str | VersionInfo) -> Any:
    """The version's tokenizer (its base's, for adapters without one), with
    `model_max_length` capped at the model's context length."""
    with collection_paused():
        from transformers import AutoTokenizer

        version = catalog.resolve(ref) if isinstance(ref, str) else ref
        if version.kind == "adapter" and not version.has_file("tokenizer.json"):
            version = weights_version(catalog, version)
        tokenizer = AutoTokenizer.from_pretrained(catalog.snapshot(version))
    context = version.lineage.get("context_length")
    if isinstance(context, int) and context < tokenizer.model_max_length:
        tokenizer.model_max_length = context
    return tokenizer


def label_names_of(version: VersionInfo, config: Any | None = None) -> list[str] | None:
    """A classifier's outputs: the lineage's `label_names`, else its config's id2label."""
    names = version.lineage.get("label_names")
    if names:
        return [str(n) for n in names]
    id2label = getattr(config, "id2label", None) if config is not None else None
    if id2label and version.task == CLASSIFICATION:
        return [str(id2label[i]) for i in sorted(int(k) for k in id2label)]
    return None


def load_version(
    catalog: Catalog,
    ref: str | VersionInfo,
    *,
    task: TaskName | None = None,
    label_names: Sequence[str] | None = None,
    dtype: Any = None,
    configure: Callable[[Any], None] | None = None,
    attn_implementation: str | None = None,
) -> LoadedVersion:
    """Any store version as a model in eval mode (see the module docstring).

    `task` loads the weights for another task than the version's own (a causal-LM base
    as a classifier to fine-tune), with `label_names` as its outputs; `configure(config)`
    may change the transformers config before the weights are built (training sets its
    dropout there); `dtype` defaults to `preferred_dtype()`. With the cyclic collector
    paused (`collection_paused`).
    """
    with collection_paused():
        return _load_version(catalog, ref, task=task, label_names=label_names, dtype=dtype,
                             configure=configure, attn_implementation=attn_implementation)


def _load_version(catalog: Catalog, ref: str | VersionInfo, *, task: TaskName | None,
                  label_names: Sequence[str] | None, dtype: Any,
                  configure: Callable[[Any], None] | None,
                  attn_implementation: str | None) -> LoadedVersion:
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    version = catalog.resolve(ref) if isinstance(ref, str) else ref
    weights = weights_version(catalog, version)
    if not any(f.path.endswith(".safetensors") for f in weights.files):
        raise InvalidRequest(f"{weights.ref} has no safetensors weights; re-import it")
    task = task or version.task
    dtype = dtype or preferred_dtype(catalog.settings)
    folder = catalog.snapshot(weights)
    tokenizer = load_tokenizer(catalog, version)
    if tokenizer.pad_token_id is None:  # pad with eos: padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    config = AutoConfig.from_pretrained(folder)
    pad_id = int(tokenizer.pad_token_id)
    labels = [str(n) for n in label_names] if label_names else None
    if task == CLASSIFICATION:
        labels = labels or label_names_of(version, config)
        if not labels:
            raise InvalidRequest(f"{version.ref} is a classifier without a label set; "
                                 "publish it again with label_names in its lineage")
        if weights.task == CLASSIFICATION and getattr(config, "pad_token_id", None) is not None:
            pad_id = int(config.pad_token_id)  # the pad the classifier was trained with
        classifier_config(config, labels, pad_id)
    if configure is not None:
        configure(config)
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "use_safetensors": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score newly initialised" is expected for new heads
    try:
        model = auto_class(task).from_pretrained(folder, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if version.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, catalog.snapshot(version))
        model.to(dtype)  # PEFT keeps adapter weights in fp32: one dtype for every weight
    model.eval()
    hyper = version.lineage.get("hyperparameters") or {}
    max_length = hyper.get("max_length") if isinstance(hyper.get("max_length"), int) else None
    return LoadedVersion(version=version, weights=weights, folder=folder, model=model,
                         tokenizer=tokenizer, task=task, label_names=labels,
                         pad_token_id=pad_id, max_length=max_length, dtype=dtype)


def classifier_config(config: Any, labels: Sequence[str], pad_id: int) -> None:
    """A sequence-classification head over `labels`, pooling the last non-pad token."""
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = pad_id  # transformers pools the last token that is not padding
    config.problem_type = "single_label_classification"


def saves_whole_modules(catalog: Catalog, version: VersionInfo) -> bool:
    """Whether a PEFT adapter saves whole modules other than a classifier head (a
    trained LM head): the engine cannot apply those per request, so it serves them merged."""
    if version.kind != "adapter" or not version.has_file("adapter_config.json"):
        return False
    config = json.loads(catalog.read_file(version, "adapter_config.json"))
    return bool(set(config.get("modules_to_save") or []) - HEAD_MODULES)


def load_merged(catalog: Catalog, version: VersionInfo, *, dtype: Any = None) -> LoadedVersion:
    """An adapter version merged into its base: one plain transformers model."""
    loaded = load_version(catalog, version, dtype=dtype)
    merged = loaded.model.merge_and_unload()
    if _head_untied(merged):  # a trained LM head (head-only fine-tune) of a tied model
        merged.config.tie_word_embeddings = False
    return replace(loaded, model=merged)


def export_merged(catalog: Catalog, version: VersionInfo, out_dir: Path) -> None:
    """Write adapter + base merged into one full Hugging Face folder, with the card."""
    import torch

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidRequest(f"export folder {out_dir} is not empty: choose a new or empty folder",
                             param="dir")
    if version.kind != "adapter":
        raise InvalidRequest(f"{version.ref} is a full model: export it without --merged",
                             param="merged")
    loaded = load_merged(catalog, version, dtype=torch.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_bytes(catalog.read_file(version, "README.md"))
    # safetensors writes its file owner-only (0600); an export is the user's folder, each
    # file readable as any new file of theirs (the umask decides, as `models export`'s)
    umask = os.umask(0)
    os.umask(umask)
    for path in out_dir.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)
    catalog.count_download(version.model)


def _head_untied(model: Any) -> bool:
    """True when the model's config ties the LM head to the embeddings but the weights
    differ (saving would silently drop the trained head)."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or not getattr(model.config, "tie_word_embeddings", False):
        return False
    return bool(out.weight.data_ptr() != inp.weight.data_ptr())
