"""Streaming text: multi-byte characters split across tokens, stop strings."""

from __future__ import annotations

import pytest

from gptstore.inference.detokenize import IncrementalDetokenizer, StopStringMatcher
from gptstore.testing.tiny import tiny_tokenizer

TEXTS = ["héllo wörld", "naïve café – 東京 😀 done", "plain ascii text", "€€€ 🙂🙃"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_deltas_concatenate_to_the_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text.encode()) // 4  # byte-level pieces: characters are split
    detok = IncrementalDetokenizer(tokenizer, [])
    deltas = [detok.push(t) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)  # never half a character


def test_prompt_context_keeps_spacing(tokenizer):
    prompt = tokenizer("The capital of")["input_ids"]
    ids = tokenizer("The capital of France is Paris")["input_ids"][len(prompt):]
    detok = IncrementalDetokenizer(tokenizer, prompt)
    assert "".join(detok.push(t) for t in ids) + detok.flush() == " France is Paris"


def test_stop_string_spanning_pushes_is_cut_and_hidden():
    stops = StopStringMatcher(["<END>"])
    out = []
    for piece in ["Hello <", "E", "N", "D> tail"]:
        text, hit = stops.push(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "Hello "
    assert hit


def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    stops = StopStringMatcher(["###"])
    assert stops.push("a #") == ("a ", False)
    assert stops.push("#") == ("", False)
    assert stops.push("x") == ("##x", False)
    assert stops.push("b ##") == ("b ", False)
    assert stops.flush() == "##"


def test_first_of_several_stops_wins():
    stops = StopStringMatcher(["bb", "a"])
    assert stops.push("xxbba") == ("xx", True)
