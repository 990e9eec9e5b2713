"""Importing and exporting models: round trips, the pickle rule and every bad input."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptstore.catalog.importers import import_path, pull
from gptstore.catalog.repository import Catalog
from gptstore.errors import Conflict, InvalidRequest, NotFound, StorageError, Unavailable


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_import_export_round_trip_is_bit_identical(catalog: Catalog, tiny_model: Path,
                                                   tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    version = import_path(catalog, tiny_model, "acme/tiny", license="mit")
    assert version.lineage["source"] == f"local:{tiny_model.resolve().name}"  # not the path
    assert version.lineage["parameters"] > 0
    assert {"config.json", "tokenizer.json", "README.md"} <= {f.path for f in version.files}
    out = tmp_path / "export"
    catalog.export("acme/tiny", out)
    before, after = _tensors(tiny_model), _tensors(out)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type in {"gpt2", "llama"}
    assert (out / "README.md").read_text().startswith("---\n")
    assert catalog.get_model("acme/tiny").downloads == 1


def test_pickle_weights_are_converted_safely(catalog: Catalog, tiny_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    version = import_path(catalog, folder, "acme/pickled")
    paths = {f.path for f in version.files}
    assert "model.safetensors" in paths and "pytorch_model.bin" not in paths
    assert version.lineage["converted_from_pickle"] == ["pytorch_model.bin"]
    stored = load_file(catalog.snapshot(version) / "model.safetensors")
    assert all(torch.equal(state[k], stored[k]) for k in state)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_is_refused_and_never_runs(catalog: Catalog,
                                                    tiny_models: dict[str, Path],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "evil"
    shutil.copytree(tiny_models["gpt2"], folder)
    (folder / "model.safetensors").unlink()
    with (folder / "pytorch_model.bin").open("wb") as f:
        pickle.dump({"weight": _Exploit()}, f)
    with pytest.raises(InvalidRequest, match="could run arbitrary code"):
        import_path(catalog, folder, "acme/evil")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    assert catalog.list_models() == []


def test_bad_inputs_leave_the_store_unchanged(catalog: Catalog, tiny_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    from transformers import ViTConfig

    import_path(catalog, tiny_models["gpt2"], "acme/existing")
    blobs_before = sorted(d for d, _ in catalog.blobs.iter_blobs())

    with pytest.raises(NotFound, match="does not exist"):
        import_path(catalog, tmp_path / "nowhere", "acme/x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidRequest, match=r"no config\.json"):
        import_path(catalog, empty, "acme/x")
    vision = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32).save_pretrained(vision)
    with pytest.raises(InvalidRequest, match="not a causal language model"):
        import_path(catalog, vision, "acme/x")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_models["gpt2"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InvalidRequest, match="has no weights"):
        import_path(catalog, no_weights, "acme/x")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_models["gpt2"], corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidRequest, match="corrupt or truncated"):
        import_path(catalog, corrupt, "acme/x")
    garbage = tmp_path / "garbage"
    shutil.copytree(tiny_models["gpt2"], garbage)
    (garbage / "model.safetensors").write_bytes(b"\xff" * 100)
    with pytest.raises(InvalidRequest, match="not a valid safetensors"):
        import_path(catalog, garbage, "acme/x")
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_models["gpt2"], no_tok)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(InvalidRequest, match="no usable tokenizer"):
        import_path(catalog, no_tok, "acme/x")
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"definitely not gguf" * 10)
    with pytest.raises(InvalidRequest, match="not a readable GGUF"):
        import_path(catalog, not_gguf, "acme/x")
    other_file = tmp_path / "notes.txt"
    other_file.write_text("hi")
    with pytest.raises(InvalidRequest, match=r"not a \.gguf"):
        import_path(catalog, other_file, "acme/x")
    with pytest.raises(Conflict, match="already exists"):
        import_path(catalog, tiny_models["gpt2"], "acme/existing")
    with pytest.raises(InvalidRequest, match="invalid namespace"):
        import_path(catalog, tiny_models["gpt2"], "../x")

    assert [m.name for m in catalog.list_models()] == ["acme/existing"]
    assert sorted(d for d, _ in catalog.blobs.iter_blobs()) == blobs_before
    assert list(catalog.settings.tmp_dir.iterdir()) == []


def test_gguf_of_unsupported_architecture(catalog: Catalog, tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "bert.gguf"
    writer = GGUFWriter(str(path), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidRequest, match="holds a 'bert' model"):
        import_path(catalog, path, "acme/bert")


def test_full_disk_during_import(catalog: Catalog, tiny_models: dict[str, Path],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    real = tempfile.mkstemp

    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)  # type: ignore[arg-type]
        if str(catalog.blobs.tmp) in name:
            os.close(fd)
            return os.open("/dev/full", os.O_WRONLY), name
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(StorageError, match="disk full"):
        import_path(catalog, tiny_models["llama"], "acme/full")
    monkeypatch.undo()
    assert catalog.list_models() == []
    assert list(catalog.blobs.iter_blobs()) == []


def test_pull_unknown_offline_says_how(catalog: Catalog) -> None:
    with pytest.raises(Unavailable, match="Only the built-in"):
        pull(catalog, "openai-community/gpt2")
