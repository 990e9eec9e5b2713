"""`gptstore sweep` on a tiny model: trials proposed by Optuna, each a run with its logs,
the best published with the sweep in its lineage and the plot of the trials."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gptstore.errors import InvalidRequest
from gptstore.training.sweep import SearchSpace, sweep


def test_sweep_publishes_the_best_trial_with_the_sweep_in_its_lineage(store, config_for):
    import shutil

    from gptstore.training import zero_shot

    settings, catalog = store
    shutil.rmtree(settings.home / zero_shot.FOLDER, ignore_errors=True)
    # the task left at auto, as from the CLI: the file's (text + label) decides it, and the
    # sweep ranks by the classifier's accuracy
    config = replace(config_for("classification", "lora", "llama", "acme/swept", epochs=2,
                                max_steps=6), task="auto")
    space = SearchSpace(dimensions=("learning_rate", "lora_r", "lora_target"),
                        lr_range=(1e-3, 3e-2), lora_ranks=(2, 4))
    seen = []
    result = sweep(config, trials=3, space=space, settings=settings, catalog=catalog,
                   on_trial=seen.append)
    assert [t.number for t in seen] == [0, 1, 2]
    assert all(t.state in ("complete", "pruned") for t in result.trials)
    assert result.metric == "accuracy"
    complete = [t for t in result.trials if t.state == "complete"]
    assert result.best.value == max(t.value for t in complete)  # accuracy: higher wins
    for trial in result.trials:
        assert set(trial.params) == {"learning_rate", "lora_r", "lora_target"}
        assert 1e-3 <= trial.params["learning_rate"] <= 3e-2
        # every trial is a run with its logs
        run_dir = settings.runs_dir / "acme--swept--sweep" / f"trial-{trial.number}"
        assert (run_dir / "metrics.jsonl").exists() and (run_dir / "tensorboard").is_dir()

    version = catalog.resolve("acme/swept")
    assert result.ref == version.ref
    sweep_lineage = version.lineage["sweep"]
    assert sweep_lineage["best_trial"] == result.best.number
    assert [t["number"] for t in sweep_lineage["trials"]] == [0, 1, 2]
    assert sweep_lineage["sampler"] == "TPE" and sweep_lineage["pruner"] == "median"
    best_params = result.best.params
    assert version.lineage["hyperparameters"]["lora_r"] == best_params["lora_r"]
    svg = catalog.read_file(version, "sweep.svg").decode()
    assert svg.startswith("<svg") and svg.count("<circle") == 3 * 3  # 3 trials x 3 panels
    # the trials' own models are gone; the best one's weights live on under the name
    assert not any(catalog.exists(f"acme/swept-trial-{n}") for n in range(3))
    saved = json.loads((settings.runs_dir / "acme--swept--sweep" / "sweep.json").read_text())
    assert len(saved) == 3
    # the trials share one starting point: its zero-shot validation was stored once, and
    # the later trials reused it (test_head_init.py shows a stored one is reused)
    assert len(list((settings.home / zero_shot.FOLDER).glob("*.json"))) == 1


def test_sweep_refuses_an_unknown_dimension():
    with pytest.raises(InvalidRequest, match="cannot search"):
        SearchSpace(dimensions=("learning_rate", "momentum"))
