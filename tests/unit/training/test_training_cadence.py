"""When validation runs: explicit `eval_every` as before; `auto` keeps validation within
~10% of the run's time (always at epoch ends and the end); and the validation pass gives
the same metrics on worker threads as on the caller's."""

from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gptstore.data.types import EncodedExample
from gptstore.training.cadence import EVAL_BUDGET, MIN_EVAL_SECONDS, EvalCadence
from gptstore.training.evaluate import evaluate_examples
from gptstore.training.tasks import get_task


def simulate(cadence: EvalCadence, *, step_seconds: float, eval_seconds: float,
             tokens_per_step: int, epoch_steps: int) -> list[int]:
    """Walk a run on a clock of fixed step and validation times; the validated steps."""
    validated, train_seconds, tokens = [], 0.0, 0
    for step in range(1, cadence.total_steps + 1):
        train_seconds += step_seconds
        tokens += tokens_per_step
        if cadence.due(step, epoch_end=step % epoch_steps == 0,
                       run_end=step == cadence.total_steps, train_seconds=train_seconds,
                       train_tokens=tokens):
            validated.append(step)
            cadence.record(step, eval_seconds)
    return validated


def test_explicit_every_validates_every_n_steps_and_at_epoch_ends():
    cadence = EvalCadence.for_run(total_steps=20, eval_every=4, auto=False, valid_tokens=0)
    steps = simulate(cadence, step_seconds=1, eval_seconds=100, tokens_per_step=1,
                     epoch_steps=10)
    assert steps == [4, 8, 10, 12, 16, 20]
    never = EvalCadence.for_run(total_steps=20, eval_every=0, auto=False, valid_tokens=0)
    assert simulate(never, step_seconds=1, eval_seconds=1, tokens_per_step=1,
                    epoch_steps=10) == [10, 20]


@pytest.mark.parametrize(("eval_seconds", "most"), [(0.5, 11), (5.0, 6), (40.0, 1),
                                                     (300.0, 1)])
def test_auto_keeps_validation_within_its_share_of_the_run(eval_seconds, most):
    # 125 steps of 1.4 s (SST-2 2000 sentences, batch 16): 175 s of training
    cadence = EvalCadence.for_run(total_steps=125, eval_every=13, auto=True,
                                  valid_tokens=872 * 25)
    steps = simulate(cadence, step_seconds=1.4, eval_seconds=eval_seconds,
                     tokens_per_step=16 * 25, epoch_steps=125)
    assert steps[-1] == 125  # the final validation always runs: it picks the weights
    assert 1 <= len(steps) <= most
    spent = len(steps) * eval_seconds
    if len(steps) > 1:  # every validation beyond the final one fits the budget
        assert spent <= EVAL_BUDGET / (1 - EVAL_BUDGET) * 125 * 1.4 + 1e-9
    assert all(b - a >= 13 for a, b in itertools.pairwise(steps))


def test_auto_estimates_the_first_validation_from_the_training_steps():
    cadence = EvalCadence.for_run(total_steps=100, eval_every=10, auto=True,
                                  valid_tokens=4000)
    # 1 s per step of 400 tokens: 4000 validation tokens at half a training token's cost
    assert cadence.estimate(10.0, 4000) == pytest.approx(5.0)
    assert cadence.estimate(0.1, 4000) == MIN_EVAL_SECONDS  # fixed costs: a floor
    # head-only training on cached features passes no tokens through its steps
    assert cadence.estimate(30.0, 0) == MIN_EVAL_SECONDS
    # validating at step 10 would cost 5 s of 10 s trained: not yet
    assert not cadence.due(10, epoch_end=False, run_end=False, train_seconds=10.0,
                           train_tokens=4000)
    assert cadence.due(90, epoch_end=False, run_end=False, train_seconds=90.0,
                       train_tokens=36000)
    cadence.record(90, 2.0)
    assert cadence.estimate(95.0, 38000) == 2.0  # measured beats estimated


def test_validation_on_worker_threads_gives_the_same_metrics(tiny_models):
    from transformers import AutoConfig

    from gptstore.inference.loader import auto_class, classifier_config

    config = AutoConfig.from_pretrained(tiny_models["llama"])
    classifier_config(config, ["a", "b"], pad_id=3)
    model = auto_class("classification").from_pretrained(
        tiny_models["llama"], config=config, dtype=torch.float32).eval()
    rng = random.Random(0)
    examples = [EncodedExample([rng.randrange(4, 200) for _ in range(rng.randrange(2, 30))],
                               label=rng.randrange(2)) for _ in range(70)]
    task = get_task("classification")
    alone = evaluate_examples(model, task, examples, pad_id=3, bf16=False, batch_size=8)
    with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        threaded = evaluate_examples(model, task, examples, pad_id=3, bf16=False,
                                     batch_size=8, executor=pool)
    # the same batches and sums; only the kernels' own thread split may differ (the
    # workers run one thread each), so equal up to float rounding
    assert threaded == pytest.approx(alone, abs=1e-6)
    assert 0.0 <= alone["accuracy"] <= 1.0 and alone["loss"] > 0


def test_auto_still_validates_at_every_epoch_end():
    # 3 epochs of 5 steps, validations too dear for the budget: epoch ends only
    cadence = EvalCadence.for_run(total_steps=15, eval_every=2, auto=True, valid_tokens=100)
    assert simulate(cadence, step_seconds=0.01, eval_seconds=5.0, tokens_per_step=10,
                    epoch_steps=5) == [5, 10, 15]
