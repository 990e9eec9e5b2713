"""Checkpoints of a run, for exact `--resume`, and the best weights seen so far.

A checkpoint is a folder `RUN/checkpoints/step-00000120/` holding

- `trainable.safetensors`: the weights that train (adapter + head, or all of them);
- `optimizer.safetensors`: the optimiser's state tensors and torch's RNG state;
- `average.safetensors`: the moving average of the trained weights, where the run keeps
  one (`ema_decay`, averaging.py);
- `state.json`: the loop's position (epoch, window in the epoch, step), counters, the
  best metrics, early-stopping patience, the curves so far, the optimiser's scalar
  settings and the config the run was started with.

Everything is safetensors or JSON: no pickle is ever written or read. A checkpoint is
written into a hidden temp folder and renamed into place, so a kill mid-write leaves the
previous checkpoint intact; only the newest `KEEP` are kept. The best weights live in
`RUN/best/trainable.safetensors` (temp file + rename), updated when validation improves.

The data position needs no sampler state: an epoch's batches depend only on
(seed, epoch) (`data/batching.py`), so resume rebuilds them and skips the done windows.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gptstore.errors import StorageError

CHECKPOINTS = "checkpoints"
BEST = "best"
AVERAGE = "average.safetensors"
KEEP = 1


@dataclass
class TrainState:
    """Where the loop is, and what it has learnt about the run so far."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # the epoch being trained (0-based)
    window: int = 0  # next window (group of micro-batches) of that epoch
    train_tokens: int = 0  # non-padding tokens through training steps
    train_seconds: float = 0.0  # time in training steps (not validation / checkpoints)
    examples_seen: int = 0
    best: dict[str, Any] | None = None  # validation metrics of the best weights + step
    last_eval: dict[str, Any] | None = None
    bad_evals: int = 0  # validations in a row without improvement
    stopped_early: bool = False
    curves: dict[str, list[list[float]]] = field(default_factory=dict)

    def add_point(self, curve: str, step: int, value: float) -> None:
        self.curves.setdefault(curve, []).append([step, value])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainState:
        return cls(**doc)


@dataclass
class Checkpoint:
    path: Path
    state: TrainState
    config: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor
    average: dict[str, torch.Tensor] | None = None


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                    dict[str, Any]]:
    """Split the optimiser's state into tensors (safetensors) and scalars (JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _atomic_dir(final: Path) -> Path:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(run_dir: Path, state: TrainState, model: nn.Module,
                    optimizer: torch.optim.Optimizer, config: dict[str, Any],
                    average: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint atomically and drop older ones; returns its folder."""
    root = run_dir / CHECKPOINTS
    final = root / f"step-{state.step:08d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = _atomic_dir(final)
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        tensors, meta = _optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        if average is not None:
            save_file(average, str(tmp / AVERAGE))
        doc = {"state": state.to_dict(), "optimizer": meta, "config": config}
        (tmp / "state.json").write_text(json.dumps(doc, indent=1, default=_json_default))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        raise StorageError(f"cannot write a checkpoint under {root}: {exc.strerror or exc}; "
                           "free disk space or choose another --run-dir") from exc
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / CHECKPOINTS
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) \
        if root.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    doc = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    rng = tensors.pop("rng.torch")
    meta = doc["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, slot = key.split(".", 2)
        state.setdefault(int(index), {})[slot] = value
    for key, value in meta["scalars"].items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = meta["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return Checkpoint(path=path, state=TrainState.from_dict(doc["state"]), config=doc["config"],
                      trainable=load_file(str(path / "trainable.safetensors")),
                      optimizer={"state": state, "param_groups": groups}, rng=rng,
                      average=load_file(str(path / AVERAGE)) if (path / AVERAGE).is_file()
                      else None)


def restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Put weights, optimiser state and torch's RNG back as they were at the checkpoint."""
    load_trainable(model, checkpoint.trainable)
    optimizer.load_state_dict(checkpoint.optimizer)
    torch.set_rng_state(checkpoint.rng)


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise StorageError(f"checkpoint lacks {len(missing)} trained weights (e.g. "
                           f"{missing[0]}); it belongs to another run: start a new one")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def save_best(run_dir: Path, model: nn.Module) -> None:
    folder = run_dir / BEST
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{os.getpid()}.safetensors"
    save_file(_trainable_state(model), str(tmp))
    os.replace(tmp, folder / "trainable.safetensors")


def load_best(run_dir: Path) -> dict[str, torch.Tensor] | None:
    path = run_dir / BEST / "trainable.safetensors"
    return load_file(str(path)) if path.is_file() else None


def clear_run(run_dir: Path) -> None:
    """Remove a finished or abandoned run's checkpoints and best weights (logs stay)."""
    for name in (CHECKPOINTS, BEST):
        shutil.rmtree(run_dir / name, ignore_errors=True)
