"""Which validated weights a run publishes: the best checkpoint only when it beats the
last weights by more than the validation set's noise."""

from __future__ import annotations

import math

import pytest

from gptstore.training.record import choose_published


def _choose(best, last, *, n, metric="accuracy", higher=True, steps=135):
    return choose_published(best, last, metric=metric, higher=higher, steps=steps,
                            valid_examples=n)


def test_a_small_validation_cannot_pick_an_earlier_checkpoint_by_chance():
    # SST-2, 400 sentences: 40 held out; step 0 (zero-shot) 0.80, the last weights 0.75
    best = {"step": 0, "accuracy": 0.8, "loss": 0.59}
    last = {"step": 135, "accuracy": 0.75, "loss": 0.90}
    chosen = _choose(best, last, n=40)  # one standard error: sqrt(.8 * .2 / 40) = 0.063
    assert chosen["step"] == 135 and chosen["accuracy"] == 0.75
    assert "within one standard error (0.063 on 40 examples)" in chosen["chosen_by"]


def test_a_large_validation_keeps_the_best_checkpoint():
    best = {"step": 0, "accuracy": 0.8, "loss": 0.59}
    last = {"step": 135, "accuracy": 0.75, "loss": 0.90}
    chosen = _choose(best, last, n=1000)  # 0.05 > sqrt(.16 / 1000) = 0.0126
    assert chosen["step"] == 0 and chosen["chosen_by"] == "best validation accuracy"


def test_the_margin_is_one_standard_error():
    n = 100
    noise = math.sqrt(0.9 * 0.1 / n)  # 0.03
    best = {"step": 10, "accuracy": 0.9}
    assert _choose(best, {"step": 135, "accuracy": 0.9 - noise + 1e-9}, n=n)["step"] == 135
    assert _choose(best, {"step": 135, "accuracy": 0.9 - noise - 1e-3}, n=n)["step"] == 10


def test_loss_and_unvalidated_last_weights_keep_the_best():
    best = {"step": 5, "loss": 1.0}
    assert _choose(best, {"step": 135, "loss": 1.01}, n=4, metric="loss",
                   higher=False)["step"] == 5
    # the last validation is not of the last weights (stopped between validations)
    best = {"step": 0, "accuracy": 0.8}
    assert _choose(best, {"step": 120, "accuracy": 0.79}, n=40)["step"] == 0
    assert _choose(None, None, n=40) is None
    last = {"step": 135, "accuracy": 0.9}
    assert _choose(last, last, n=40)["chosen_by"] == "best validation accuracy"


def test_early_stopping_counts_only_validations_clearly_worse_than_the_best():
    from gptstore.training.record import noise_of, within_noise

    assert noise_of("accuracy", 0.8, 40) == pytest.approx(math.sqrt(0.8 * 0.2 / 40))
    assert noise_of("loss", 0.5, 40) is None and noise_of("accuracy", 0.8, 0) is None
    best = {"accuracy": 0.8}
    # 40 examples: 0.775 is one example worse, chance; 0.7 is four, a real drop
    assert within_noise(best, {"accuracy": 0.775}, metric="accuracy", higher=True,
                        valid_examples=40)
    assert not within_noise(best, {"accuracy": 0.7}, metric="accuracy", higher=True,
                            valid_examples=40)
    assert not within_noise(best, {"accuracy": 0.775}, metric="accuracy", higher=True,
                            valid_examples=10_000)
    assert not within_noise({"loss": 1.0}, {"loss": 1.0001}, metric="loss", higher=False,
                            valid_examples=40)
