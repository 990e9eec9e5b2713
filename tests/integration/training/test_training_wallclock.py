"""Wall clock to a published model: the record shows where the time went (data, load,
train, validation, publish), and `eval_every: auto` validates within its time budget."""

from __future__ import annotations

from gptstore.training import finetune
from gptstore.training.cadence import EVAL_BUDGET


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
    # auto: at most ~10 validations plus the final one, the final one at the last step
    evals = catalog.resolve("acme/wallclock").metrics["curves"]["valid_loss"]
    assert 1 <= len(evals) <= 11 and evals[-1][0] == result.record.steps
    # all but the final validation fit within the budget's share of the training time
    # (a tiny run's training is too short for any but the final one)
    if len(evals) > 1:
        per_eval = timings["validation"] / len(evals)
        assert timings["validation"] - per_eval <= \
            EVAL_BUDGET / (1 - EVAL_BUDGET) * timings["train"] * 1.5
