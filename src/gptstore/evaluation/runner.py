"""`gptstore eval`: a store model's task metrics on an evaluation file.

`evaluate_model(catalog, ref, path, task=..., prompt=...)` reads the file for the task
(`datasets.py`), asks the model, and scores with the metric core (`metrics.py`):

- classification: a fine-tuned classifier through the inference engine's batched
  `classify`; a causal LM zero / few-shot by the next token's logits of each label's
  verbaliser (`scoring.label_logits`);
- causal-lm: perplexity and bits per byte of the file's target tokens
  (`scoring.causal_lm_sums`);
- qa, translation: generations from the inference engine (continuous batching),
  greedy, through the chat template or as a raw prompt, with k shots;
- code: n samples per problem from the engine, run in the sandbox, pass@k.

`progress(phase, done, total)` reports each phase (the CLI draws a bar). The report is
an `EvalReport`; its `to_dict()` is the `--json` shape (metrics under `metrics`).

Knows no HTTP and no CLI. Imports torch and the engine inside the functions.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.errors import InvalidRequest
from gptstore.evaluation.datasets import (
    EvalData,
    EvalTask,
    LabelledText,
    read_eval_data,
)
from gptstore.evaluation.metrics import (
    classification_metrics,
    language_modeling_metrics,
    question_answering_metrics,
    translation_metrics,
    utf8_byte_count,
)
from gptstore.evaluation.prompting import (
    PromptFormat,
    answer_of,
    chat_messages,
    raw_prompt,
)
from gptstore.evaluation.verbalizers import require_verbalizer_ids, verbalizer_text
from gptstore.tasks import CLASSIFICATION

ProgressFn = Callable[[str, int, int], None]
Rows = list[dict[str, Any]]

#: stop strings of raw (non-chat) generation: a base model continues with the next
#: shot after a blank line
RAW_STOPS: dict[str, tuple[str, ...]] = {"qa": ("\n",), "translation": ("\n",),
                                         "code": ("```",)}


@dataclass(frozen=True)
class EvalReport:
    """One evaluation: which model, on which data (by digest), how asked, the metrics."""

    model: str  # namespace/name@N
    task: EvalTask
    data: str
    digest: str
    examples: int  # scored examples (shots excluded)
    mode: str  # "classifier", "0-shot", "3-shot", ...
    metrics: dict[str, Any]
    prompt: dict[str, Any]
    seconds: float
    #: per scored example: its line (or task id) and what the model answered
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        doc = {"model": self.model, "task": self.task, "data": self.data,
               "digest": self.digest, "examples": self.examples, "mode": self.mode,
               "metrics": self.metrics, "prompt": self.prompt,
               "seconds": round(self.seconds, 3)}
        return doc


def evaluate_model(
    catalog: Catalog,
    ref: str,
    path: str | Path,
    *,
    task: str | None = None,
    prompt: PromptFormat | None = None,
    samples: int = 1,
    limit: int | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Evaluate store model `ref` on the file at `path` (see the module docstring)."""
    version = catalog.resolve(ref)
    task = task or _default_task(version, Path(path))
    data = read_eval_data(path, task)
    return evaluate_data(catalog, version, data, prompt=prompt or PromptFormat(),
                         samples=samples, limit=limit, batch_size=batch_size,
                         progress=progress)


def evaluate_data(
    catalog: Catalog,
    version: VersionInfo,
    data: EvalData,
    *,
    prompt: PromptFormat,
    samples: int = 1,
    limit: int | None = None,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
) -> EvalReport:
    """Evaluate an already-read data set (suites call this with their stored data)."""
    started = time.perf_counter()
    report = progress or (lambda _phase, _done, _total: None)
    if version.task == CLASSIFICATION and data.task != CLASSIFICATION:
        raise InvalidRequest(f"{version.ref} is a classifier; it can only be evaluated on "
                             "classification data (--task classification)", param="task")
    if samples < 1:
        raise InvalidRequest(f"samples must be >= 1, got {samples}", param="samples")
    shots, items = _split_shots(data, prompt.shots, limit)
    if data.task == CLASSIFICATION:
        if version.task == CLASSIFICATION:
            if prompt.shots:
                raise InvalidRequest("shots are for base models: a fine-tuned classifier "
                                     "scores each text alone; drop --shots", param="shots")
            metrics, predictions = _classifier_metrics(catalog, version, items, prompt,
                                                       report)
            mode = "classifier"
        else:
            metrics, predictions = _zero_shot_metrics(catalog, version, data, shots, items,
                                                      prompt, batch_size, report)
            mode = f"{prompt.shots}-shot"
    elif data.task == "causal-lm":
        metrics, count = _causal_lm_metrics(catalog, version, data, limit, batch_size, report)
        return EvalReport(version.ref, data.task, str(data.path), data.digest, count,
                          "0-shot", metrics, prompt.to_dict(), time.perf_counter() - started)
    else:
        metrics, predictions = _generation_metrics(catalog, version, data.task, shots, items,
                                                   prompt, samples, report)
        mode = f"{prompt.shots}-shot"
    return EvalReport(version.ref, data.task, str(data.path), data.digest, len(items), mode,
                      metrics, prompt.to_dict(), time.perf_counter() - started, predictions)


def _default_task(version: VersionInfo, path: Path) -> EvalTask:
    from gptstore.evaluation.datasets import detect_eval_task

    if version.task == CLASSIFICATION:
        return "classification"
    return detect_eval_task(path)


def _split_shots(data: EvalData, shots: int, limit: int | None) -> tuple[list[Any], list[Any]]:
    """The first `shots` examples are the in-context examples and are not scored."""
    items = list(data.items)
    if data.task == "causal-lm":
        return [], items
    if shots >= len(items):
        raise InvalidRequest(f"{data.path.name} has {len(items)} examples, so {shots} shots "
                             "leave none to score; lower --shots", param="shots")
    scored = items[shots:]
    if limit is not None:
        scored = scored[:limit]
    return items[:shots], scored


# ------------------------------------------------------------------ classification


def _classifier_metrics(catalog: Catalog, version: VersionInfo, items: Sequence[Any],
                        prompt: PromptFormat, report: ProgressFn) -> tuple[dict[str, Any], Rows]:
    """A fine-tuned classifier through the inference engine's batched `classify`."""
    from gptstore.evaluation.prompting import fill
    from gptstore.inference.store import build_engine

    texts = [fill(prompt.template or "{text}", "classification", item) for item in items]
    engine = build_engine(catalog.settings, catalog)
    try:
        scored: list[list[tuple[str, float]]] = []
        chunk = 64
        report("classifying", 0, len(texts))
        for start in range(0, len(texts), chunk):
            scored += engine.classify(version.ref, texts[start:start + chunk])
            report("classifying", len(scored), len(texts))
    finally:
        engine.shutdown()
    labels = [label for label, _ in scored[0]]
    _check_gold_labels(items, labels, version.ref)
    predicted = [max(row, key=lambda lp: lp[1])[0] for row in scored]
    nll = [-math.log(max(dict(row)[item.label], 1e-45)) for row, item in zip(scored, items,
                                                                            strict=True)]
    return (_classification_doc(items, predicted, labels, sum(nll) / len(nll)),
            _rows(items, predicted, [dict(row) for row in scored]))


def _zero_shot_metrics(catalog: Catalog, version: VersionInfo, data: EvalData,
                       shots: Sequence[Any], items: Sequence[Any], prompt: PromptFormat,
                       batch_size: int, report: ProgressFn) -> tuple[dict[str, Any], Rows]:
    """A causal LM asked for the next token: the label whose verbaliser scores highest."""
    import torch

    from gptstore.evaluation.scoring import label_logits
    from gptstore.inference.loader import load_version
    from gptstore.inference.prompts import render_chat_prompt

    labels = list(data.label_names)
    report("loading", 0, 1)
    loaded = load_version(catalog, version, dtype=torch.float32)
    tokenizer = loaded.tokenizer
    chat = bool(prompt.chat)
    token_ids = require_verbalizer_ids(tokenizer, labels, prompt.verbalizers,
                                       leading_space=not chat)

    def say(example: LabelledText) -> str:
        return verbalizer_text(example.label, prompt.verbalizers)

    limit = loaded.max_length or _context(tokenizer)
    prompts: list[list[int]] = []
    for item in items:
        if chat:
            ids = render_chat_prompt(tokenizer, chat_messages(prompt, "classification", item,
                                                              shots, answer=say))
        else:
            # the classification training format encodes texts like this
            text = raw_prompt(prompt, "classification", item, shots, answer=say)
            ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if len(ids) > limit:
            raise InvalidRequest(f"{data.path.name} line {item.line}: the prompt has "
                                 f"{len(ids)} tokens, more than the model's {limit}; use "
                                 "fewer --shots or shorter texts", param="data")
        prompts.append(ids)
    logits = label_logits(loaded.model, prompts, token_ids, pad_id=loaded.pad_token_id,
                          batch_size=batch_size, progress=lambda d, t: report("scoring", d, t))
    log_probs = torch.log_softmax(logits, dim=-1)  # over the labels only
    predicted = [labels[int(i)] for i in log_probs.argmax(-1)]
    gold = torch.tensor([labels.index(item.label) for item in items])
    loss = float(-log_probs[torch.arange(len(items)), gold].mean())
    doc = _classification_doc(items, predicted, labels, loss)
    # the word said for each label, and the one token of it that is scored
    doc["verbalizers"] = {label: verbalizer_text(label, prompt.verbalizers) for label in labels}
    doc["verbalizer_tokens"] = {label: tokenizer.decode([t])
                                for label, t in zip(labels, token_ids, strict=True)}
    probs = log_probs.exp().tolist()
    return doc, _rows(items, predicted, [dict(zip(labels, p, strict=True)) for p in probs])


def _rows(items: Sequence[Any], predicted: Sequence[str],
          probabilities: Sequence[dict[str, float]]) -> Rows:
    return [{"line": item.line, "label": item.label, "prediction": guess,
             "probabilities": probs}
            for item, guess, probs in zip(items, predicted, probabilities, strict=True)]


def _check_gold_labels(items: Sequence[Any], labels: Sequence[str], ref: str) -> None:
    known = set(labels)
    for item in items:
        if item.label not in known:
            raise InvalidRequest(f"line {item.line}: label {item.label!r} is not one of "
                                 f"{ref}'s labels {list(labels)}; evaluate it on data with "
                                 "the labels it was trained on", param="data")


def _classification_doc(items: Sequence[Any], predicted: Sequence[str],
                        labels: Sequence[str], loss: float) -> dict[str, Any]:
    scores = classification_metrics([item.label for item in items], predicted, labels)
    return {
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "loss": loss,
        "labels": list(scores.labels),
        "per_class": {c.label: {"precision": c.precision, "recall": c.recall, "f1": c.f1,
                                "support": c.support} for c in scores.per_class},
        "confusion": [list(row) for row in scores.confusion],
        "count": scores.count,
    }


# ------------------------------------------------------------------ causal LM


def _causal_lm_metrics(catalog: Catalog, version: VersionInfo, data: EvalData,
                       limit: int | None, batch_size: int, report: ProgressFn
                       ) -> tuple[dict[str, Any], int]:
    """Perplexity and bits per byte of the tokens training would score in this file."""
    import torch

    from gptstore.data import default_max_length, load_training_data
    from gptstore.evaluation.scoring import causal_lm_sums, target_ids
    from gptstore.inference.loader import load_version

    report("loading", 0, 1)
    loaded = load_version(catalog, version, dtype=torch.float32)
    length = loaded.max_length or default_max_length(loaded.tokenizer)
    encoded = load_training_data(data.path, "causal-lm", loaded.tokenizer, length)
    examples = encoded.examples[:limit] if limit is not None else encoded.examples
    sums = causal_lm_sums(loaded.model, examples, pad_id=loaded.pad_token_id,
                          batch_size=max(1, batch_size // 2),
                          progress=lambda d, t: report("scoring", d, t))
    # bytes of the text the scored tokens spell (an eos that ends a document is scored
    # but spells no byte of the text)
    n_bytes = sum(utf8_byte_count(loaded.tokenizer.decode(target_ids(e),
                                                          skip_special_tokens=True))
                  for e in examples)
    scores = language_modeling_metrics(sums.nll_sum, sums.tokens, max(1, n_bytes))
    metrics = {"loss": scores.nll_per_token, **scores.to_dict(),
               "token_accuracy": sums.correct / max(1, sums.tokens)}
    return metrics, len(examples)


# ------------------------------------------------------------------ generation


def _generation_metrics(catalog: Catalog, version: VersionInfo, task: EvalTask,
                        shots: Sequence[Any], items: Sequence[Any], prompt: PromptFormat,
                        samples: int, report: ProgressFn) -> tuple[dict[str, Any], Rows]:
    """QA, translation and code: generations from the engine, scored."""
    from gptstore.inference.prompts import render_chat_prompt
    from gptstore.inference.store import build_engine
    from gptstore.inference.types import SamplingParams

    engine = build_engine(catalog.settings, catalog)
    try:
        report("loading", 0, 1)
        tokenizer = engine.tokenizer(version.ref)
        chat = prompt.chat if prompt.chat is not None else bool(
            getattr(tokenizer, "chat_template", None))
        prompts: list[list[int]] = []
        for item in items:
            if chat:
                ids = render_chat_prompt(tokenizer, chat_messages(prompt, task, item, shots))
            else:
                text = raw_prompt(prompt, task, item, shots)
                if task == "code":
                    text += "\n```python\n"
                ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
            prompts.append(ids)
        stops = () if chat else RAW_STOPS.get(task, ())
        # pass@1 from one sample is the greedy answer; more samples need sampling
        params = [SamplingParams(max_tokens=prompt.max_tokens, stop=stops,
                                 temperature=0.0 if samples == 1 else 0.8,
                                 top_p=1.0 if samples == 1 else 0.95, seed=i)
                  for i in range(samples)]
        requests = [(i, p) for i in range(len(prompts)) for p in params]
        texts = generate_all(engine, version.ref, [(prompts[i], p) for i, p in requests],
                             items=[items[i] for i, _ in requests],
                             progress=lambda d, t: report("generating", d, t))
    finally:
        engine.shutdown()
    answers = [answer_of(task, text) for text in texts]
    rows = [{"line": getattr(items[i], "line", None) or getattr(items[i], "task_id", None),
             "generated": text, "prediction": answer}
            for (i, _), text, answer in zip(requests, texts, answers, strict=True)]
    if task == "qa":
        qa = question_answering_metrics(answers, [item.answers for item in items])
        return qa.to_dict(), rows
    if task == "translation":
        bleu = translation_metrics(answers, [item.references for item in items])
        return bleu.to_dict(), rows
    return _code_metrics(items, answers, samples, report), rows


def generate_all(engine: Any, model: str, requests: Sequence[tuple[list[int], Any]], *,
                 items: Sequence[Any], progress: Callable[[int, int], None]) -> list[str]:
    """Every request's text, in order. Submitted a window at a time, so the engine's
    scheduler always has a full batch and its queue never overflows."""
    from gptstore.inference.types import GenerationRequest

    window = max(1, min(engine.config.max_queue, 2 * engine.config.max_running))
    texts: list[str] = [""] * len(requests)
    pending: deque[tuple[int, Any]] = deque()
    submitted = done = 0
    progress(0, len(requests))
    while done < len(requests):
        while submitted < len(requests) and len(pending) < window:
            ids, params = requests[submitted]
            try:
                handle = engine.submit(GenerationRequest(prompt_ids=ids, model=model,
                                                         params=params))
            except InvalidRequest as exc:
                line = getattr(items[submitted], "line", None) or \
                    getattr(items[submitted], "task_id", "?")
                raise InvalidRequest(f"example at line {line}: {exc.message}; use fewer "
                                     "--shots or shorter examples", param="data") from exc
            pending.append((submitted, handle))
            submitted += 1
        index, handle = pending.popleft()
        texts[index] = handle.result().text
        done += 1
        progress(done, len(requests))
    return texts


def _code_metrics(items: Sequence[Any], answers: Sequence[str], samples: int,
                  report: ProgressFn) -> dict[str, Any]:
    from gptstore.evaluation.code_eval import evaluate_code

    completions: dict[str, list[str]] = {item.task_id: [] for item in items}
    owners = [item.task_id for item in items for _ in range(samples)]
    for task_id, answer in zip(owners, answers, strict=True):
        completions[task_id].append(answer)
    ks = [k for k in (1, 10, 100) if k <= samples]
    result = evaluate_code(items, completions, ks=ks,
                           on_result=lambda d, t: report("running tests", d, t))
    return {**result.pass_at_k, "problems": len(items), "samples": samples,
            "passed": sum(p.correct for p in result.problems)}


def _context(tokenizer: Any) -> int:
    from gptstore.data import default_max_length

    return default_max_length(tokenizer)
