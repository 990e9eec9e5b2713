"""Every metric against values worked out by hand (the working is in the comments)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from gptstore.errors import InvalidRequest
from gptstore.evaluation.metrics import (
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


def test_importing_evaluation_loads_no_heavy_library() -> None:
    # `gptstore --help` and the API process must stay fast: scikit-learn and sacreBLEU
    # are imported by the functions that use them, torch never
    script = ("import sys, gptstore.evaluation\n"
              "print([m for m in ('torch', 'sklearn', 'sacrebleu') if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ classification

# labels in a given, non-alphabetical order: cat, dog, bird
#   gold      cat cat cat dog dog  bird
#   predicted cat cat dog dog bird bird
# confusion (rows gold, columns predicted, both in label order):
#   cat  -> cat 2, dog 1, bird 0
#   dog  -> cat 0, dog 1, bird 1
#   bird -> cat 0, dog 0, bird 1
# accuracy = (2 + 1 + 1) / 6 = 2/3
# precision = diagonal / column sum: cat 2/2 = 1, dog 1/2, bird 1/2
# recall    = diagonal / row sum:    cat 2/3,     dog 1/2, bird 1/1
# F1 = 2PR/(P+R): cat 2*(2/3)/(5/3) = 4/5, dog 1/2, bird 2*(1/2)/(3/2) = 2/3
# macro-F1 = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
GOLD = ["cat", "cat", "cat", "dog", "dog", "bird"]
PREDICTED = ["cat", "cat", "dog", "dog", "bird", "bird"]
LABELS = ["cat", "dog", "bird"]


def test_classification_three_classes_by_hand() -> None:
    scores = classification_metrics(GOLD, PREDICTED, LABELS)
    assert scores.labels == ("cat", "dog", "bird")
    assert scores.confusion == ((2, 1, 0), (0, 1, 1), (0, 0, 1))
    assert scores.accuracy == pytest.approx(2 / 3)
    assert scores.macro_f1 == pytest.approx(59 / 90)
    by_label = {c.label: c for c in scores.per_class}
    assert [(c.precision, c.recall, c.f1, c.support) for c in scores.per_class] == [
        pytest.approx((1.0, 2 / 3, 4 / 5, 3)),
        pytest.approx((1 / 2, 1 / 2, 1 / 2, 2)),
        pytest.approx((1 / 2, 1.0, 2 / 3, 1)),
    ]
    assert by_label["bird"].support == 1
    assert scores.count == 6
    assert json.loads(json.dumps(scores.to_dict()))["confusion"][0] == [2, 1, 0]


def test_classification_default_label_order_is_sorted() -> None:
    scores = classification_metrics(GOLD, PREDICTED)
    assert scores.labels == ("bird", "cat", "dog")
    # the same matrix with rows and columns permuted to bird, cat, dog
    assert scores.confusion == ((1, 0, 0), (0, 2, 1), (1, 0, 1))


def test_classification_class_never_predicted_counts_zero_in_macro_f1() -> None:
    # "neutral" has a gold example but is never predicted: P = R = F1 = 0 for it.
    # pos: P 1/1, R 1/1, F1 1; neg: P 1/2 (two predicted, one right), R 1/1, F1 2/3
    # macro-F1 = (1 + 2/3 + 0) / 3 = 5/9
    scores = classification_metrics(["pos", "neg", "neutral"], ["pos", "neg", "neg"],
                                    ["pos", "neg", "neutral"])
    assert scores.macro_f1 == pytest.approx(5 / 9)
    assert scores.per_class[2].precision == 0.0 and scores.per_class[2].recall == 0.0


def test_classification_refuses_unknown_labels_and_bad_shapes() -> None:
    with pytest.raises(InvalidRequest, match=r"predicted\[1\] is 'maybe'.*add it to `labels`"):
        classification_metrics(["a", "b"], ["a", "maybe"], ["a", "b"])
    with pytest.raises(InvalidRequest, match="gold has 2 items but predicted has 1"):
        classification_metrics(["a", "b"], ["a"])
    with pytest.raises(InvalidRequest, match="duplicates"):
        classification_metrics(["a"], ["a"], ["a", "a"])
    with pytest.raises(InvalidRequest, match="empty"):
        classification_metrics([], [])


# ------------------------------------------------------------------ causal LM


def test_language_modeling_by_hand() -> None:
    # 50 tokens, each with probability 1/4: nll_sum = 50 ln 4 nats.
    # perplexity = exp(50 ln 4 / 50) = 4
    # bits per byte over 200 bytes = 50 ln 4 / (ln 2 * 200) = 50 * 2 / 200 = 0.5
    scores = language_modeling_metrics(50 * math.log(4), tokens=50, n_bytes=200)
    assert scores.perplexity == pytest.approx(4.0)
    assert scores.bits_per_byte == pytest.approx(0.5)
    assert scores.nll_per_token == pytest.approx(math.log(4))


def test_utf8_bytes_count_bytes_not_characters() -> None:
    # "é" is 2 bytes in UTF-8, "€" 3, "a" 1
    assert utf8_byte_count("aé€") == 6


def test_language_modeling_edges() -> None:
    assert language_modeling_metrics(0.0, 3, 3).perplexity == 1.0  # a certain model
    assert language_modeling_metrics(1e6, 1, 1).perplexity == math.inf  # no overflow error
    with pytest.raises(InvalidRequest, match="tokens must be >= 1"):
        language_modeling_metrics(1.0, 0, 1)
    with pytest.raises(InvalidRequest, match="n_bytes"):
        language_modeling_metrics(1.0, 1, 0)
    with pytest.raises(InvalidRequest, match="nll_sum"):
        language_modeling_metrics(float("nan"), 1, 1)


# ------------------------------------------------------------------ question answering


def test_squad_normalisation_by_hand() -> None:
    # "The  Cat's, hat!"
    #   lower case          -> "the  cat's, hat!"
    #   drop punctuation    -> "the  cats hat"     (the apostrophe goes, the s stays)
    #   drop a / an / the   -> "   cats hat"       (whole words only)
    #   collapse whitespace -> "cats hat"
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    # articles only as whole words: "theatre" and "Anna" keep their letters
    assert normalize_answer("An apple at the theatre, Anna") == "apple at theatre anna"


def test_squad_token_f1_partial_overlap_by_hand() -> None:
    # prediction "the cat sat on a mat"  -> cat sat on mat   (4 tokens)
    # gold       "A cat on the red mat." -> cat on red mat   (4 tokens)
    # common tokens: cat, on, mat = 3; P = 3/4, R = 3/4, F1 = 3/4
    assert token_f1_score("the cat sat on a mat", "A cat on the red mat.") == pytest.approx(0.75)
    # counts are clipped: "the the cat" vs "cat cat" -> [cat] vs [cat, cat]: 1 common,
    # P = 1/1, R = 1/2, F1 = 2/3
    assert token_f1_score("the the cat", "cat cat") == pytest.approx(2 / 3)
    assert exact_match_score("The Eiffel Tower!", "eiffel tower") == 1.0
    # SQuAD v1.1: no common token is 0, even when both sides normalise to nothing
    assert token_f1_score("the", "a") == 0.0


def test_qa_metrics_max_over_gold_answers_in_percent() -> None:
    # question 1: golds "dog" (EM 0, F1 0) and the partial overlap above (EM 0, F1 3/4)
    #             -> EM 0, F1 3/4
    # question 2 (NQ-open style, several answers): "Paris" vs "paris" -> EM 1, F1 1
    # EM = 100 * (0 + 1) / 2 = 50; F1 = 100 * (3/4 + 1) / 2 = 87.5
    scores = question_answering_metrics(
        ["the cat sat on a mat", "Paris"],
        [["dog", "A cat on the red mat."], ["paris", "Paris, France"]])
    assert scores.exact_match == pytest.approx(50.0)
    assert scores.f1 == pytest.approx(87.5)
    assert scores.count == 2


def test_qa_metrics_refuse_bad_gold_answers() -> None:
    with pytest.raises(InvalidRequest, match=r"gold_answers\[0\] is a string.*\['Paris'\]"):
        question_answering_metrics(["Paris"], ["Paris"])
    with pytest.raises(InvalidRequest, match=r"gold_answers\[1\] is empty"):
        question_answering_metrics(["a", "b"], [["a"], []])


# ------------------------------------------------------------------ translation


def test_bleu_and_chrf_of_a_perfect_match_are_100() -> None:
    scores = translation_metrics(["Ein Mann fährt Fahrrad."], [["Ein Mann fährt Fahrrad."]])
    assert scores.bleu == pytest.approx(100.0)
    assert scores.chrf == pytest.approx(100.0)


def test_bleu_brevity_penalty_and_chrf_by_hand() -> None:
    # BLEU: hypothesis "the cat sat on the mat" (6 tokens under 13a), reference
    # "the cat sat on the mat today" (7). Every 1..4-gram of the hypothesis is in the
    # reference, so all four precisions are 100 % and smoothing plays no part; only the
    # brevity penalty acts: BP = exp(1 - r/c) = exp(1 - 7/6), BLEU = 100 exp(-1/6) = 84.648
    #
    # chrF (sacreBLEU: character n-grams 1..6 with spaces removed, beta = 2, precision and
    # recall averaged over the orders where both sides have n-grams ("effective order")):
    # hypothesis "cat", reference "cats"
    #   n=1: c a t   vs c a t s      P 3/3, R 3/4
    #   n=2: ca at   vs ca at ts     P 2/2, R 2/3
    #   n=3: cat     vs cat ats      P 1/1, R 1/2
    #   n=4: none    vs cats         not counted
    #   P = 1, R = (3/4 + 2/3 + 1/2) / 3 = 23/36
    #   chrF2 = (1 + 4) P R / (4 P + R) = 5 (23/36) / (4 + 23/36) = 115/167 = 68.862
    bleu = translation_metrics(["the cat sat on the mat"], [["the cat sat on the mat today"]])
    assert bleu.bleu == pytest.approx(100 * math.exp(1 - 7 / 6))
    assert "BP = 0.846" in bleu.bleu_summary
    chrf = translation_metrics(["cat"], [["cats"]])
    assert chrf.chrf == pytest.approx(100 * 115 / 167)


def test_bleu_of_a_corpus_without_4_grams_is_0() -> None:
    # sacreBLEU's documented corpus BLEU: the geometric mean of the 1..4-gram
    # precisions. A corpus of 3-token sentences has no 4-gram at all, so p4 = 0/0 counts
    # as 0 and BLEU is 0 even for a perfect match (sentence-level BLEU or effective
    # order would be needed); chrF, on characters, still gives 100.
    scores = translation_metrics(["the cat sat"], [["the cat sat"]])
    assert scores.bleu == 0.0
    assert scores.chrf == pytest.approx(100.0)


def test_translation_signatures_name_the_settings() -> None:
    scores = translation_metrics(["a b c d"], [["a b c d"]])
    assert scores.bleu_signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|")
    assert scores.chrf_signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|")
    # a varying number of references per sentence shows as nrefs:var
    var = translation_metrics(["a b c d", "e f g h"], [["a b c d", "a b c e"], ["e f g h"]])
    assert var.bleu_signature.startswith("nrefs:var|")
    assert var.bleu == pytest.approx(100.0)


def test_translation_refuses_a_string_as_references() -> None:
    with pytest.raises(InvalidRequest, match=r"references\[0\] is a string"):
        translation_metrics(["a"], ["a"])
    with pytest.raises(InvalidRequest, match=r"no tokenizer 'no-such'; use one of \[.*'13a'"):
        translation_metrics(["a"], [["a"]], tokenize="no-such")


def test_translation_works_offline_and_writes_nothing(tmp_path: Path) -> None:
    # A fresh interpreter whose sockets refuse to open and whose HOME is empty: the
    # default 13a tokenizer must score without a download or a cache file.
    script = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network used')\n"
        "socket.socket = refuse\n"
        "socket.create_connection = refuse\n"
        "from gptstore.evaluation.metrics import translation_metrics\n"
        "s = translation_metrics(['the cat sat on it'], [['the cat sat on it']])\n"
        "print(round(s.bleu, 6), round(s.chrf, 6))\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100.0", "100.0"]
    assert list(home.iterdir()) == []


# ------------------------------------------------------------------ pass@k


def test_pass_at_k_by_hand() -> None:
    # n = 5 samples, c = 2 correct
    # k=1: 1 - C(3,1)/C(5,1) = 1 - 3/5  = 2/5;  product form 1 - (1-1/4)(1-1/5) = 1 - 3/5
    # k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 7/10; product form 1 - (1-2/4)(1-2/5) = 1 - 3/10
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a correct one
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 5) == 1.0


def test_pass_at_k_product_form_equals_the_binomial_formula() -> None:
    for n in (1, 2, 7, 20, 200):
        for c in {0, 1, n // 3, n // 2, n - 1, n}:
            for k in {k for k in (1, 2, n // 2, n) if 1 <= k <= n}:
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_averaged_over_problems() -> None:
    # problem a: (5, 2) -> pass@1 2/5, pass@2 7/10; problem b: (5, 0) -> 0, 0
    # means: pass@1 = 1/5, pass@2 = 7/20
    scores = pass_at_k_scores({"a": (5, 2), "b": (5, 0)}, [1, 2])
    assert scores == {"pass@1": pytest.approx(0.2), "pass@2": pytest.approx(0.35)}


def test_pass_at_k_refuses_k_above_n_naming_the_problem() -> None:
    with pytest.raises(InvalidRequest, match=r"pass@3 needs at least 3 samples.*'b' has 2"):
        pass_at_k_scores({"a": (5, 1), "b": (2, 1)}, [1, 3])
    with pytest.raises(InvalidRequest, match="k must be in"):
        pass_at_k(5, 1, 0)
    with pytest.raises(InvalidRequest, match="c \\(correct samples\\)"):
        pass_at_k(5, 6, 1)
