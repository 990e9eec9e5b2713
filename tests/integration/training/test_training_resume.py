"""Checkpoints and exact resume: a run killed (an exception at a step, or a real SIGKILL
of a subprocess) and resumed reaches the same metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from gptstore.errors import Conflict, InvalidRequest
from gptstore.training import TrainConfig, finetune
from gptstore.training.logs import read_metrics

# dropout everywhere, so resume must also restore the RNG to agree
RUN = {"epochs": 3, "eval_every": 5, "save_every": 4, "dropout": 0.1, "lora_dropout": 0.1}


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def callback(event) -> None:
        if event.kind == "step" and event.step == step:
            raise Crash(f"injected at step {step}")

    return callback


def _strip(result) -> dict:
    return {"final": result.final, "best": result.best, "last": result.last,
            "steps": result.steps, "train_tokens": result.train_tokens}


@pytest.mark.parametrize("extra", [
    {}, {"dropout": 0.0, "lora_dropout": 0.0, "shards": 2},
    {"dropout": 0.0, "lora_dropout": 0.0, "ema_decay": 0.9},  # the average resumes too
], ids=["dropout", "shards", "ema"])
def test_resume_after_an_exception_equals_the_uninterrupted_run(store, config_for, extra):
    settings, catalog = store
    run = {**RUN, **extra}
    tag = "ema" if "ema_decay" in extra else "shards" if extra else "dropout"
    reference = finetune(config_for("classification", "lora", "llama", f"acme/ref-{tag}", **run),
                         settings=settings, catalog=catalog).record
    config = config_for("classification", "lora", "llama", f"acme/crashed-{tag}", **run)
    with pytest.raises(Crash):
        finetune(config, settings=settings, catalog=catalog, callbacks=[crash_at(10)])
    assert not catalog.exists(f"acme/crashed-{tag}")  # nothing half-published
    run_dir = settings.runs_dir / f"acme--crashed-{tag}"
    assert (run_dir / "checkpoints" / "step-00000008").is_dir()
    # without --resume the unfinished run is protected
    with pytest.raises(Conflict, match="--resume"):
        finetune(config, settings=settings, catalog=catalog)
    resumed = finetune(TrainConfig(**{**config.to_dict(), "resume": True}), settings=settings,
                       catalog=catalog).record
    assert _strip(resumed) == _strip(reference)
    ref_curves = catalog.resolve(f"acme/ref-{tag}").metrics["curves"]
    assert catalog.resolve(f"acme/crashed-{tag}").metrics["curves"] == ref_curves
    # the logs read as one run: each step once, in order
    steps = [e["step"] for e in read_metrics(run_dir) if e["split"] == "train"]
    assert steps == list(range(1, resumed.steps + 1))


SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from gptstore.settings import Settings
    from gptstore.catalog.repository import Catalog
    from gptstore.training import TrainConfig, finetune

    home, config = sys.argv[1], json.loads(sys.argv[2])

    def kill(event):
        if event.kind == "step" and event.step == 6:
            os.kill(os.getpid(), signal.SIGKILL)

    settings = Settings(home=home, offline=True)
    finetune(TrainConfig(**config), settings=settings, catalog=Catalog(settings),
             callbacks=[kill])
""")


def test_resume_after_sigkill_equals_the_uninterrupted_run(store, config_for, tmp_path):
    settings, catalog = store
    run = {**RUN, "epochs": 2, "save_every": 4}
    reference = finetune(config_for("causal-lm", "full", "gpt2", "acme/lm-ref", **run),
                         settings=settings, catalog=catalog).record
    config = config_for("causal-lm", "full", "gpt2", "acme/lm-killed", **run)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(settings.home),
                           json.dumps(config.to_dict())], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GPTSTORE_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not catalog.exists("acme/lm-killed")
    run_dir = settings.runs_dir / "acme--lm-killed"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000004"]
    resumed = finetune(TrainConfig(**{**config.to_dict(), "resume": True}), settings=settings,
                       catalog=catalog).record
    assert _strip(resumed) == _strip(reference)


def test_resume_needs_a_checkpoint_and_the_same_settings(store, config_for):
    settings, catalog = store
    config = config_for("classification", "head", "gpt2", "acme/resume-rules", **RUN)
    with pytest.raises(InvalidRequest, match="nothing to resume") as info:
        finetune(TrainConfig(**{**config.to_dict(), "resume": True}), settings=settings,
                 catalog=catalog)
    assert info.value.param == "resume"
    # the refused run leaves no empty folder of its own behind
    assert not (settings.runs_dir / "acme--resume-rules").exists()
    with pytest.raises(Crash):
        finetune(config, settings=settings, catalog=catalog, callbacks=[crash_at(6)])
    changed = TrainConfig(**{**config.to_dict(), "resume": True, "learning_rate": 0.5})
    with pytest.raises(InvalidRequest, match="learning_rate"):
        finetune(changed, settings=settings, catalog=catalog)
    # the same settings continue fine
    result = finetune(TrainConfig(**{**config.to_dict(), "resume": True}), settings=settings,
                      catalog=catalog).record
    assert result.steps == 36
