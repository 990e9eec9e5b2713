"""Auto-evaluation on publish: a fine-tune with `eval_suite` is evaluated on that suite
right after it is published (in the same run, so a job reports it), and so is its base
when the suite has no result for it yet, so the leaderboard has the base beside it.

An evaluation that fails does not unpublish the model: its error is reported with the
result instead (the model is in the store either way; `gptstore eval NAME --suite S`
retries it).
"""

from __future__ import annotations

from typing import Any

from gptstore.catalog.evaluations import Evaluations
from gptstore.errors import GptStoreError


def evaluate_published(catalog: Any, suite_name: str, ref: str, base_ref: str
                       ) -> tuple[dict[str, Any], ...]:
    """Results of the base (when missing) and of the new version on the suite."""
    from gptstore.evaluation.suites import evaluate_on_suite

    evaluations = Evaluations(catalog)
    suite = evaluations.get_suite(suite_name)
    base = catalog.resolve(base_ref)
    done = {r.version_id for r in evaluations.results_of_suite(suite)}
    out = []
    for target in ([base_ref] if base.id not in done else []) + [ref]:
        try:
            report, result = evaluate_on_suite(catalog, target, suite_name)
            out.append({"suite": suite_name, "model": report.model, "mode": report.mode,
                        "metric": suite.metric, "score": result.score,
                        "examples": report.examples, "data_digest": result.data_digest})
        except (GptStoreError, RuntimeError, ValueError) as exc:
            out.append({"suite": suite_name, "model": target, "error": str(exc)})
    return tuple(out)
