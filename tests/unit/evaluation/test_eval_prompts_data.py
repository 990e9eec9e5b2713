"""Evaluation files, prompt formats and verbalisers (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptstore.errors import InvalidRequest
from gptstore.evaluation.datasets import (
    LabelledText,
    QAExample,
    TranslationExample,
    detect_eval_task,
    read_eval_data,
)
from gptstore.evaluation.prompting import PromptFormat, answer_of, chat_messages, raw_prompt
from gptstore.evaluation.verbalizers import (
    parse_verbalizers,
    require_verbalizer_ids,
    verbalizer_token_ids,
)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_task_is_told_by_the_first_record(tmp_path: Path) -> None:
    cases = {"qa": {"question": "q", "answer": ["a"]}, "translation": {"source": "s",
             "target": "t"}, "classification": {"text": "t", "label": "x"},
             "code": {"task_id": 1, "text": "t", "code": "c", "test_list": ["assert 1"]},
             "causal-lm": {"text": "hello"}}
    for task, row in cases.items():
        assert detect_eval_task(_jsonl(tmp_path / f"{task}.jsonl", [row])) == task
    (tmp_path / "a.txt").write_text("plain")
    assert detect_eval_task(tmp_path / "a.txt") == "causal-lm"
    with pytest.raises(InvalidRequest, match="line 1: cannot tell the task"):
        detect_eval_task(_jsonl(tmp_path / "odd.jsonl", [{"x": 1}]))


def test_qa_reads_squad_nq_open_and_plain_answers(tmp_path: Path) -> None:
    data = read_eval_data(_jsonl(tmp_path / "qa.jsonl", [
        {"question": "q1", "context": "c", "answers": {"text": ["a", "b"], "answer_start": [0, 1]}},
        {"question": "q2", "answer": ["x", "y"]},
        {"question": "q3", "answers": "z"}]))
    assert data.items == (QAExample("q1", ("a", "b"), 1, "c"), QAExample("q2", ("x", "y"), 2),
                          QAExample("q3", ("z",), 3))
    assert data.digest.startswith("sha256:")
    with pytest.raises(InvalidRequest, match=r"qa.jsonl line 2: 'answers' must be"):
        read_eval_data(_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answers": ["a"]},
                                                     {"question": "q", "answers": []}]))


def test_translation_and_classification_files(tmp_path: Path) -> None:
    mt = read_eval_data(_jsonl(tmp_path / "mt.jsonl", [{"source": "a", "target": "b"},
                                                       {"source": "c", "references": ["d", "e"]}]))
    assert mt.items == (TranslationExample("a", ("b",), 1), TranslationExample("c", ("d", "e"), 2))
    cls = read_eval_data(_jsonl(tmp_path / "c.jsonl", [{"text": "x", "label": "b"},
                                                       {"text": "y", "label": "a"}]))
    assert cls.label_names == ("a", "b") and cls.items[0] == LabelledText("x", "b", 1)
    with pytest.raises(InvalidRequest, match="evaluation refuses"):
        read_eval_data(_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": None}]),
                       "classification")


def test_raw_and_chat_prompts_with_shots() -> None:
    shots = [QAExample("Capital of France?", ("Paris",), 1)]
    item = QAExample("Capital of Italy?", ("Rome",), 2)
    fmt = PromptFormat(shots=1, system="Be brief.")
    assert raw_prompt(fmt, "qa", item, shots) == (
        "Be brief.\n\nQuestion: Capital of France?\nAnswer: Paris\n\n"
        "Question: Capital of Italy?\nAnswer:")
    assert chat_messages(fmt, "qa", item, shots) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question: Capital of France?\nAnswer:"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "Question: Capital of Italy?\nAnswer:"}]
    with pytest.raises(InvalidRequest, match=r"uses 'sentence'.*\{question\}"):
        raw_prompt(PromptFormat(template="{sentence}"), "qa", item, [])
    assert PromptFormat.from_dict(fmt.to_dict()) == fmt


def test_answers_are_read_from_the_generation() -> None:
    assert answer_of("qa", "\n  Answer: Paris\nQuestion: next") == "Paris"
    assert answer_of("translation", "die Katze\n\nmore") == "die Katze"
    assert answer_of("code", "Here:\n```python\ndef f():\n    return 1\n```\nDone") == \
        "def f():\n    return 1\n"
    assert answer_of("code", "def f(): return 1") == "def f(): return 1"


class _Tokenizer:
    """Splits on spaces; the first token of " word" is " " + its first 3 letters."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        words = text.split(" ")
        return {"input_ids": [hash((" " if text.startswith(" ") else "") + w[:3]) % 1000
                              for w in words if w]}


def test_verbalizers_need_words_with_distinct_first_tokens() -> None:
    tok = _Tokenizer()
    assert verbalizer_token_ids(tok, ["negative", "positive"]) is not None
    assert verbalizer_token_ids(tok, ["0", "1"]) is None  # not words: a fresh head
    assert verbalizer_token_ids(tok, ["posh", "positive"]) is None  # same first token
    mapped = parse_verbalizers(["0=negative", "1=positive"])
    assert verbalizer_token_ids(tok, ["0", "1"], mapped) == \
        verbalizer_token_ids(tok, ["negative", "positive"])
    with pytest.raises(InvalidRequest, match="start differently"):
        require_verbalizer_ids(tok, ["posh", "positive"])
    with pytest.raises(InvalidRequest, match="LABEL=WORD"):
        parse_verbalizers(["positive"])
