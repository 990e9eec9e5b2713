"""Publishing a finished run as a new store model version.

Builds what the model card and the catalog show: the lineage (base version, task,
method, training and validation data with digests, the full resolved config and which
values were `auto`, seed, code and library versions, label set, what trained) and the
metrics (`final`: validation metrics of the published weights; `best`: the same with
the step they come from; `last`: the end-of-training validation; `train`: tokens,
seconds, throughput, steps; `curves`: train and validation losses, which the card
summarises). The method writes the folder (adapter or full model) into a private temp
folder in the store's home; `Catalog.publish` stores it atomically, so a failure at any
point leaves no half-published model.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptstore import __version__
from gptstore.catalog.repository import VersionInfo

if TYPE_CHECKING:
    from gptstore.training.loop import FineTuneRun

#: the catalog keeps at most this many points per curve (metrics.jsonl has them all)
MAX_CURVE_POINTS = 400


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`gptstore <version>`, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"gptstore {__version__}" + (f" (git {sha})" if sha else "")


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": str(torch.__version__), "transformers": str(transformers.__version__),
            "peft": str(peft.__version__)}


def thin(points: list[list[float]], limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Every k-th point (and the last), so a long run's curve stays a small JSON list."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    kept = points[::stride]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def build_lineage(run: FineTuneRun) -> dict[str, Any]:
    cfg = run.rcfg
    train = run.train_data
    lineage: dict[str, Any] = {
        "source": "finetune",
        "base": run.base.ref,
        "task": run.task.name,
        "method": run.method.name,
        "dataset": {"name": Path(train.path).name, "digest": f"sha256:{train.digest}",
                    "format": train.format, "examples": len(run.train_examples),
                    "truncated": train.truncated},
        "valid_dataset": run.valid_info,
        "hyperparameters": cfg.to_dict(),
        "auto": run.cfg.auto_fields,
        "seed": cfg.seed,
        "precision": "bf16 autocast" if run.bf16 else "fp32",
        "code_version": code_version(),
        "libraries": library_versions(),
        **run.describe,
    }
    if run.label_names is not None:
        lineage["label_names"] = list(run.label_names)
    best = run.state.best
    lineage["published_checkpoint"] = (
        {"step": best["step"], "chosen_by": f"best validation {cfg.metric}"} if best
        else {"step": run.state.step, "chosen_by": "end of training (no validation set)"})
    return lineage


def build_metrics(run: FineTuneRun) -> dict[str, Any]:
    state = run.state
    metrics: dict[str, Any] = {}
    if state.best is not None:
        metrics["final"] = {k: v for k, v in state.best.items() if k != "step"}
        metrics["best"] = dict(state.best)
    if state.last_eval is not None and state.last_eval != state.best:
        metrics["last"] = dict(state.last_eval)
    train_loss = state.curves.get("train_loss", [])
    metrics["train"] = {
        "loss": train_loss[-1][1] if train_loss else None,
        "tokens": state.train_tokens,
        "seconds": round(state.train_seconds, 3),
        "tokens_per_second": round(state.train_tokens / max(1e-9, state.train_seconds), 1),
        "steps": state.step,
        "stopped_early": state.stopped_early,
    }
    metrics["curves"] = {name: thin(points) for name, points in state.curves.items()
                         if name in ("train_loss", "valid_loss", "valid_accuracy",
                                     "valid_token_accuracy")}
    return metrics


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    """JSON types only (the catalog stores JSON; the card renders YAML)."""
    return json.loads(json.dumps(doc, default=str))


def publish_run(run: FineTuneRun) -> VersionInfo:
    """Write the trained model with its method and publish it with lineage and metrics."""
    cfg = run.rcfg
    run.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run.settings.tmp_dir, prefix="finetune-"))
    try:
        run.method.export(run.model, staging, base_ref=run.base.ref, tokenizer=run.tokenizer,
                          restore_config=run.restore_config)
        description = cfg.description or (
            f"{run.task.name} fine-tune ({run.method.name}) of {run.base.ref} on "
            f"{Path(run.train_data.path).name}.")
        return run.catalog.publish(
            cfg.name, staging, task=run.task.name, kind=run.method.kind, base=run.base.ref,
            description=description, tags=[*cfg.tags, "fine-tuned", run.method.name],
            license=cfg.license, lineage=_plain(build_lineage(run)),
            metrics=_plain(build_metrics(run)),
            new_model=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
