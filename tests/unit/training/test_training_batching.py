"""Length-grouped batching: every example once per epoch, deterministic, little padding."""

from __future__ import annotations

import random

import numpy as np

from gptstore.data.batching import pad_batch, padding_stats, plan_batches, plan_eval_batches


def _lengths(n: int = 2000, seed: int = 0) -> list[int]:
    rng = random.Random(seed)  # skewed like sentences: many short, a few long
    return [max(2, int(rng.lognormvariate(3.0, 0.5))) for _ in range(n)]


def test_each_example_once_per_epoch_and_deterministic():
    lengths = _lengths()
    plan = plan_batches(lengths, 16, seed=0, epoch=0)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(len(b) <= 16 for b in plan) and sum(len(b) < 16 for b in plan) <= 2
    assert plan == plan_batches(lengths, 16, seed=0, epoch=0)
    assert plan != plan_batches(lengths, 16, seed=0, epoch=1)
    assert plan != plan_batches(lengths, 16, seed=1, epoch=0)


def test_grouping_by_length_cuts_padding():
    lengths = _lengths()
    grouped = padding_stats(lengths, plan_batches(lengths, 16, seed=0, epoch=0))
    shuffled = padding_stats(lengths, plan_batches(lengths, 16, seed=0, epoch=0,
                                                   group_by_length=False))
    assert grouped.real_tokens == shuffled.real_tokens == sum(lengths)
    assert shuffled.padding_fraction > 0.3
    assert grouped.padding_fraction < 0.05
    assert grouped.to_dict()["slots"] == grouped.slots


def test_batch_order_is_shuffled_not_sorted():
    lengths = _lengths()
    plan = plan_batches(lengths, 16, seed=0, epoch=0)
    widths = [max(lengths[i] for i in b) for b in plan]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_eval_batches_are_sorted_and_complete():
    lengths = [5, 1, 9, 3, 7]
    plan = plan_eval_batches(lengths, 2)
    assert plan == [[2, 4], [0, 3], [1]]


def test_pad_batch_right_pads_ids_mask_and_labels():
    out = pad_batch([[5, 6, 7], [8]], pad_id=0, labels=[[-100, 6, 7], [8]])
    np.testing.assert_array_equal(out["input_ids"], [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(out["labels"], [[-100, 6, 7], [8, -100, -100]])
    assert out["input_ids"].dtype == np.int64
