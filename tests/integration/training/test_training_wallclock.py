"""Wall clock to a published model: the record shows where the time went (data, load,
train, validation, publish), and `eval_every: auto` validates within its time budget."""

from __future__ import annotations

from gptstore.training import finetune


def test_record_shows_load_train_eval_publish_and_auto_cadence(store, config_for):
    settings, catalog = store
    config = config_for("classification", "lora", "llama", "acme/wallclock", epochs=3,
                        eval_every="auto", shards=2)
    result = finetune(config, settings=settings, catalog=catalog)
    timings = result.record.timings
    for key in ("prepare", "load_model", "train", "validation", "publish", "total"):
        assert timings[key] >= 0.0, key
    assert timings["train"] > 0 and timings["validation"] > 0 and timings["publish"] > 0
    parts = sum(timings[k] for k in ("prepare", "load_model", "train", "validation",
                                     "publish"))
    assert parts <= timings["total"] + 1e-6
    assert result.to_dict()["timings"]["publish"] == round(timings["publish"], 3)
    # the published copy was written before publishing finished: it has no total
    stored = catalog.resolve("acme/wallclock").metrics["timings"]
    assert "train" in stored and "publish" not in stored
    # auto: every epoch end (the last one is the end of the run), and in between at most
    # what the time budget allows (cadence.py; its arithmetic is tested on a clock in
    # tests/unit/training/test_training_cadence.py)
    evals = catalog.resolve("acme/wallclock").metrics["curves"]["valid_loss"]
    steps = [int(step) for step, _ in evals]
    per_epoch = result.record.steps // 3
    assert {per_epoch, 2 * per_epoch, 3 * per_epoch} <= set(steps)
    assert steps[-1] == result.record.steps and len(steps) <= 3 + 10
