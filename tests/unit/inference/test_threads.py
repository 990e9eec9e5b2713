"""The intra-op threads of a base's steps, checked on its steps (inference/threads.py)."""

from __future__ import annotations

from gptstore.inference.threads import StepThreads


def _run(threads: StepThreads, steps: int, seconds: dict[int, float], rows: int = 4,
         prefill_tokens: int = 0) -> list[int]:
    """Run `steps` steps, each taking `seconds[threads it ran on]`; returns those threads."""
    ran = []
    for _ in range(steps):
        n = threads.next(prefill_tokens, rows)
        ran.append(n)
        threads.observe(n, seconds[n], prefill_tokens, rows)
    return ran


def test_a_load_time_choice_of_one_thread_is_corrected_by_faster_steps() -> None:
    threads = StepThreads(1, most=2, first_check=8, samples=3)
    ran = _run(threads, 8, {1: 0.020, 2: 0.012})
    assert ran == [1] * 8 and threads.checking  # the 8th decode-only step began a check
    ran = _run(threads, 6, {1: 0.020, 2: 0.012})
    assert ran == [2, 1, 2, 1, 2, 1]  # alternating until each side has 3 steps
    assert threads.chosen == 2 and threads.checks == 1 and not threads.checking
    assert _run(threads, 20, {1: 0.020, 2: 0.012}) == [2] * 20  # until the next check


def test_more_threads_must_be_faster_by_the_margin() -> None:
    threads = StepThreads(2, most=2, first_check=4, samples=3)
    _run(threads, 4 + 6, {1: 0.0100, 2: 0.0095})  # 1.05x: not worth a second core
    assert threads.chosen == 1 and threads.checks == 1


def test_the_choice_is_checked_again_as_the_machine_changes() -> None:
    threads = StepThreads(2, most=2, first_check=4, every=50, samples=3)
    _run(threads, 10, {1: 0.020, 2: 0.012})
    assert threads.chosen == 2 and threads.checks == 1
    # a neighbour process takes a core: two threads now wait on each other
    ran = _run(threads, 49, {1: 0.022, 2: 0.060})
    assert ran == [2] * 49 and not threads.checking  # not yet due
    _run(threads, 7, {1: 0.022, 2: 0.060})
    assert threads.chosen == 1 and threads.checks == 2


def test_steps_with_prompt_tokens_or_other_rows_are_not_compared() -> None:
    threads = StepThreads(1, most=2, first_check=2, samples=3)
    _run(threads, 1, {1: 0.020, 2: 0.012})
    _run(threads, 30, {1: 0.020, 2: 0.012}, prefill_tokens=64)  # not counted toward a check
    assert not threads.checking and threads.chosen == 1
    _run(threads, 1, {1: 0.020, 2: 0.012})
    assert threads.checking
    # prompt tokens make a step slow whatever its threads: such steps run on the
    # choice, and are left out
    assert _run(threads, 4, {1: 0.500, 2: 0.500}, prefill_tokens=64) == [1] * 4
    # the rows changed: the check starts over on the new count, its old samples dropped
    _run(threads, 1, {1: 0.020, 2: 0.012}, rows=9)
    _run(threads, 5, {1: 0.040, 2: 0.024}, rows=9)
    assert threads.chosen == 2 and threads.checks == 1


def test_a_check_without_comparable_steps_is_given_up() -> None:
    threads = StepThreads(1, most=2, first_check=1, samples=2)
    _run(threads, 1, {1: 0.020, 2: 0.012})
    assert threads.checking
    ran = _run(threads, 17, {1: 0.020, 2: 0.012}, prefill_tokens=8)
    assert ran == [1] * 17
    assert not threads.checking and threads.chosen == 1 and threads.checks == 0
    _run(threads, 1, {1: 0.020, 2: 0.012})
    assert threads.checking  # due again after `first_check` decode-only steps


def test_configured_threads_are_never_checked() -> None:
    threads = StepThreads(2, most=2, checked=False, first_check=1, samples=1)
    assert _run(threads, 50, {1: 0.001, 2: 0.100}) == [2] * 50
    assert threads.checks == 0
    one_core = StepThreads(1, most=1, first_check=1, samples=1)
    assert _run(one_core, 50, {1: 0.001}) == [1] * 50
