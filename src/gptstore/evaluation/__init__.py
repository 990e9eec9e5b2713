"""Task evaluation: the score of each task, and the sandbox that runs generated code.

Public entry points:

- `metrics.py`: `classification_metrics`, `language_modeling_metrics`,
  `question_answering_metrics` (SQuAD v1.1), `translation_metrics` (sacreBLEU),
  `pass_at_k` / `pass_at_k_scores` (Chen et al. 2021); each returns a frozen record
  with `to_dict()` for a model card or `--json`;
- `sandbox.py`: `run_program` / `run_programs` -> `SandboxResult` under a
  `SandboxConfig`, and `probe_isolation` (what this machine's kernel granted);
- `formats.py`: `read_mbpp`, `read_humaneval` -> `CodeProblem`;
- `code_eval.py`: `evaluate_code` (completions -> sandbox -> pass@k).

The metric modules above do not know models, the inference engine or the CLI: whoever
evaluates a model generates the predictions (or sums the NLL) and calls them. The
modules that evaluate store models are not imported here (import them by name):

- `datasets.py` evaluation files per task, `prompting.py` prompt formats (template,
  chat or raw, k shots), `verbalizers.py` the word (and token) of each label;
- `runner.py`: `evaluate_model` / `evaluate_data` -> `EvalReport` (`gptstore eval`),
  generation through the inference engine, scores from `scoring.py` (torch);
- `suites.py` / `builtin_suites.py`: suites in the store, recorded results.

No torch is imported here; scikit-learn and sacreBLEU only inside the functions that
use them.
"""

from __future__ import annotations

from gptstore.evaluation.code_eval import CodeEvaluation, ProblemResult, evaluate_code
from gptstore.evaluation.formats import CodeProblem, read_humaneval, read_mbpp
from gptstore.evaluation.metrics import (
    ClassificationScores,
    ClassScores,
    LanguageModelingScores,
    QuestionAnsweringScores,
    TranslationScores,
    classification_metrics,
    exact_match_score,
    language_modeling_metrics,
    normalize_answer,
    pass_at_k,
    pass_at_k_scores,
    question_answering_metrics,
    token_f1_score,
    translation_metrics,
    utf8_byte_count,
)
from gptstore.evaluation.sandbox import (
    IsolationReport,
    Outcome,
    SandboxConfig,
    SandboxResult,
    probe_isolation,
    run_program,
    run_programs,
)

__all__ = [
    "ClassScores",
    "ClassificationScores",
    "CodeEvaluation",
    "CodeProblem",
    "IsolationReport",
    "LanguageModelingScores",
    "Outcome",
    "ProblemResult",
    "QuestionAnsweringScores",
    "SandboxConfig",
    "SandboxResult",
    "TranslationScores",
    "classification_metrics",
    "evaluate_code",
    "exact_match_score",
    "language_modeling_metrics",
    "normalize_answer",
    "pass_at_k",
    "pass_at_k_scores",
    "probe_isolation",
    "question_answering_metrics",
    "read_humaneval",
    "read_mbpp",
    "run_program",
    "run_programs",
    "token_f1_score",
    "translation_metrics",
    "utf8_byte_count",
]
