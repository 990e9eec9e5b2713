"""Verbalisers: the word a causal LM would say for each class label.

Owns one rule, shared by zero-shot classification (`runner.py` scores the next token)
and by training (a classification head whose rows start as the LM head's rows for these
tokens, `training/head_init.py`), so the two agree exactly at step 0:

- a label's verbaliser is the label itself, or the word the caller maps it to
  (`{"0": "negative"}`), after a space when it continues raw text (" positive"), without
  one at the start of a chat answer ("positive");
- its token is the *first* token of that text: one row of the LM head per class, which is
  what a linear head over the last hidden state can hold. A multi-token verbaliser is
  scored by its first token (lm-eval-harness scores the whole continuation; one token
  keeps zero-shot and the initial head identical, and most label words are one token);
- a label that is not a word (digits, punctuation) or two labels whose first tokens
  coincide have no verbaliser set: zero-shot scoring refuses them, training starts a
  fresh head.

Knows tokenizers only (no torch, no models).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gptstore.errors import InvalidRequest

#: a word: starts with a letter, then letters, digits, spaces, hyphens, apostrophes, / or .
_WORD = re.compile(r"[^\W\d_][\w\-' /.&]*")


def verbalizer_text(label: str, verbalizers: Mapping[str, str] | None = None) -> str:
    """The word said for `label` (the label itself unless `verbalizers` maps it)."""
    return (verbalizers or {}).get(label, label).strip()


def is_word(text: str) -> bool:
    return bool(_WORD.fullmatch(text))


def verbalizer_token_ids(
    tokenizer: Any,
    labels: Sequence[str],
    verbalizers: Mapping[str, str] | None = None,
    *,
    leading_space: bool = True,
) -> list[int] | None:
    """The first token of each label's verbaliser, in label order; None when a label is
    not a word or two labels share a first token (see the module docstring)."""
    ids: list[int] = []
    for label in labels:
        word = verbalizer_text(label, verbalizers)
        if not is_word(word):
            return None
        tokens = tokenizer((" " if leading_space else "") + word,
                           add_special_tokens=False)["input_ids"]
        if not tokens:
            return None
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        return None
    return ids


def require_verbalizer_ids(
    tokenizer: Any,
    labels: Sequence[str],
    verbalizers: Mapping[str, str] | None = None,
    *,
    leading_space: bool = True,
) -> list[int]:
    """`verbalizer_token_ids`, or an error that names the label and the fix."""
    ids = verbalizer_token_ids(tokenizer, labels, verbalizers, leading_space=leading_space)
    if ids is not None:
        return ids
    for label in labels:
        if not is_word(verbalizer_text(label, verbalizers)):
            raise InvalidRequest(
                f"label {label!r} is not a word, so a base model cannot say it; map each "
                "label to a word (e.g. --verbalizer 0=negative --verbalizer 1=positive)",
                param="verbalizers")
    firsts = {label: tokenizer((" " if leading_space else "")
                               + verbalizer_text(label, verbalizers),
                               add_special_tokens=False)["input_ids"][:1] for label in labels}
    raise InvalidRequest(
        f"labels share their first token ({firsts}); zero-shot scoring reads one token "
        "per label, so map them to words that start differently (--verbalizer LABEL=WORD)",
        param="verbalizers")


def parse_verbalizers(pairs: Sequence[str]) -> dict[str, str]:
    """`["0=negative", "1=positive"]` (the CLI's repeated flag) -> a mapping."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        label, sep, word = pair.partition("=")
        if not sep or not label.strip() or not word.strip():
            raise InvalidRequest(f"--verbalizer {pair!r}: write LABEL=WORD, e.g. 1=positive",
                                 param="verbalizers")
        mapping[label.strip()] = word.strip()
    return mapping
