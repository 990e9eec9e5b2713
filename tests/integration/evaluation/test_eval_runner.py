"""`gptstore eval` on tiny models, task by task: each figure is checked against an
independent computation (plain transformers forward passes and `generate`, the metric
core on the predictions the report lists)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gptstore.errors import InvalidRequest
from gptstore.evaluation.metrics import question_answering_metrics, translation_metrics
from gptstore.evaluation.prompting import PromptFormat
from gptstore.evaluation.runner import evaluate_model
from gptstore.settings import Settings

SENTIMENT = [("the movie was great", "positive"), ("the plot was dull", "negative"),
             ("I loved the food", "positive"), ("the acting was bad", "negative"),
             ("the service was friendly", "positive"), ("I hated it", "negative")]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
          ) -> Iterator[Any]:
    from gptstore.catalog.importers import import_path
    from gptstore.catalog.repository import Catalog

    # served in fp32 whatever this machine measured best: greedy text is compared with
    # transformers' fp32 generate, token for token
    catalog = Catalog(Settings(home=tmp_path_factory.mktemp("store"), offline=True,
                               inference_dtype="float32"))
    for arch, folder in tiny_models.items():
        import_path(catalog, folder, f"acme/tiny-{arch}")
    yield catalog
    catalog.close()


def _causal_lm(catalog: Any, name: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = catalog.snapshot(catalog.resolve(name))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_shot_classification_is_the_next_token_of_each_verbaliser(store, tmp_path, arch):
    data = write_jsonl(tmp_path / "sentiment.jsonl",
                       [{"text": t, "label": label} for t, label in SENTIMENT])
    report = evaluate_model(store, f"acme/tiny-{arch}", data)
    assert report.task == "classification" and report.mode == "0-shot"
    metrics = report.metrics
    assert metrics["labels"] == ["negative", "positive"] and metrics["count"] == 6

    # reference: the full LM forward of each text alone, logits at its last token
    model, tokenizer = _causal_lm(store, f"acme/tiny-{arch}")
    ids = [tokenizer(" negative", add_special_tokens=False)["input_ids"][0],
           tokenizer(" positive", add_special_tokens=False)["input_ids"][0]]
    gold, predicted, nll = [], [], 0.0
    with torch.no_grad():
        for (text, label), row in zip(SENTIMENT, report.predictions, strict=True):
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0, -1, ids]
            probs = torch.softmax(logits, -1)
            assert [row["probabilities"][k] for k in ("negative", "positive")] == \
                pytest.approx(probs.tolist(), abs=1e-5)
            predicted.append(["negative", "positive"][int(probs.argmax())])
            gold.append(label)
            nll -= math.log(float(probs[int(label == "positive")]))
    assert [r["prediction"] for r in report.predictions] == predicted
    assert metrics["accuracy"] == pytest.approx(
        sum(g == p for g, p in zip(gold, predicted, strict=True)) / 6)
    assert metrics["loss"] == pytest.approx(nll / 6, abs=1e-5)
    assert sum(map(sum, metrics["confusion"])) == 6


def test_zero_shot_refuses_labels_that_are_not_words_unless_mapped(store, tmp_path):
    data = write_jsonl(tmp_path / "digits.jsonl",
                       [{"text": t, "label": int(label == "positive")} for t, label in SENTIMENT])
    with pytest.raises(InvalidRequest, match=r"not a word.*--verbalizer"):
        evaluate_model(store, "acme/tiny-llama", data)
    mapped = PromptFormat(verbalizers={"0": "negative", "1": "positive"})
    report = evaluate_model(store, "acme/tiny-llama", data, prompt=mapped)
    assert report.metrics["labels"] == ["0", "1"]
    assert report.metrics["verbalizers"] == {"0": "negative", "1": "positive"}
    # the tiny tokenizer splits these words: each label is scored by its first token
    _, tokenizer = _causal_lm(store, "acme/tiny-llama")
    assert report.metrics["verbalizer_tokens"] == {
        "0": tokenizer.decode(tokenizer(" negative", add_special_tokens=False)["input_ids"][:1]),
        "1": tokenizer.decode(tokenizer(" positive", add_special_tokens=False)["input_ids"][:1])}


def test_few_shot_prompt_holds_the_shots_and_scores_the_rest(store, tmp_path):
    data = write_jsonl(tmp_path / "sentiment.jsonl",
                       [{"text": t, "label": label} for t, label in SENTIMENT])
    report = evaluate_model(store, "acme/tiny-gpt2", data,
                            prompt=PromptFormat(shots=2, template="Review: {text}\nSentiment:"))
    assert report.mode == "2-shot" and report.examples == 4
    assert [r["line"] for r in report.predictions] == [3, 4, 5, 6]


def test_perplexity_and_bits_per_byte_match_a_plain_forward(store, tmp_path):
    text = "The capital of France is Paris. The capital of Italy is Rome."
    data = write_jsonl(tmp_path / "heldout.jsonl", [{"text": text}])
    report = evaluate_model(store, "acme/tiny-llama", data, task="causal-lm")
    metrics = report.metrics
    model, tokenizer = _causal_lm(store, "acme/tiny-llama")
    # a text document is scored as training sees it: its tokens, then the eos that ends it
    ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        mean_nll = float(model(input_ids=ids, labels=ids).loss)  # over len-1 predictions
    assert metrics["tokens"] == ids.shape[1] - 1
    assert metrics["nll_per_token"] == pytest.approx(mean_nll, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-5)
    # the first token is predicted by nothing; the eos spells no byte
    scored_text = tokenizer.decode(ids[0, 1:], skip_special_tokens=True)
    assert scored_text == text[len(tokenizer.decode(ids[0, :1])):]
    assert metrics["bits_per_byte"] == pytest.approx(
        mean_nll * metrics["tokens"] / (math.log(2) * len(scored_text.encode())), rel=1e-5)


def _greedy(model: Any, prompt_ids: list[int], max_new: int) -> list[int]:
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False,
                         pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def test_qa_generates_through_the_engine_and_scores_with_squad_rules(store, tmp_path):
    rows = [{"question": "What is the capital of France?", "answers": ["Paris"]},
            {"question": "Who wrote Hamlet?", "answers": ["Shakespeare", "William Shakespeare"]},
            {"question": "What is two plus two?", "context": "Two plus two is four.",
             "answers": {"text": ["four"], "answer_start": [16]}}]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    report = evaluate_model(store, "acme/tiny-llama", data,
                            prompt=PromptFormat(max_tokens=8))
    assert report.task == "qa" and report.examples == 3
    # the metric core over the report's own predictions gives the report's figures
    predictions = [r["prediction"] for r in report.predictions]
    expected = question_answering_metrics(predictions, [["Paris"], ["Shakespeare",
                                          "William Shakespeare"], ["four"]])
    assert report.metrics == expected.to_dict()
    # and the engine's greedy text equals transformers' generate on the chat prompt
    model, tokenizer = _causal_lm(store, "acme/tiny-llama")
    messages = [{"role": "user", "content": "Question: What is the capital of France?\n"
                 "Answer:"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new = _greedy(model, ids, 8)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    new = new[:new.index(eos)] if eos in new else new
    assert report.predictions[0]["generated"] == tokenizer.decode(new)


def test_translation_reports_bleu_chrf_and_signatures(store, tmp_path):
    rows = [{"source": "the cat sits", "target": "die Katze sitzt"},
            {"source": "a dog runs", "references": ["ein Hund rennt", "ein Hund läuft"]}]
    data = write_jsonl(tmp_path / "mt.jsonl", rows)
    report = evaluate_model(store, "acme/tiny-gpt2", data, prompt=PromptFormat(
        chat=False, shots=0, max_tokens=6))
    predictions = [r["prediction"] for r in report.predictions]
    expected = translation_metrics(predictions, [["die Katze sitzt"],
                                                 ["ein Hund rennt", "ein Hund läuft"]])
    assert report.metrics == expected.to_dict()
    assert report.metrics["bleu_signature"].startswith("nrefs:var")
    # raw prompts stop at the end of the line: one answer per line
    assert all("\n" not in r["generated"] for r in report.predictions)


MBPP = [{"task_id": 1, "text": "Write a function to add two numbers.",
         "code": "def add(a, b):\n    return a + b", "test_list": ["assert add(1, 2) == 3"]},
        {"task_id": 2, "text": "Write a function to negate a number.",
         "code": "def neg(a):\n    return -a", "test_list": ["assert neg(2) == -2"]}]


def test_code_runs_samples_in_the_sandbox_and_reports_pass_at_k(store, tmp_path):
    data = write_jsonl(tmp_path / "mbpp.jsonl", MBPP)
    report = evaluate_model(store, "acme/tiny-llama", data, samples=2,
                            prompt=PromptFormat(max_tokens=16))
    assert report.task == "code"
    # a random tiny model writes no working Python: both samples of both problems fail
    assert report.metrics == {"pass@1": 0.0, "problems": 2, "samples": 2, "passed": 0}
    assert len(report.predictions) == 4


def test_eval_cli_json_keeps_metrics_under_metrics(store, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gptstore.cli.app import app

    monkeypatch.setenv("GPTSTORE_HOME", str(store.settings.home))
    data = write_jsonl(tmp_path / "sentiment.jsonl",
                       [{"text": t, "label": label} for t, label in SENTIMENT])
    result = CliRunner().invoke(app, ["eval", "acme/tiny-llama", "--data", str(data),
                                      "--json", "--predictions", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["examples"] == 6 and doc["task"] == "classification"
    assert {"accuracy", "macro_f1", "per_class", "confusion"} <= set(doc["metrics"])
    assert doc["digest"].startswith("sha256:")
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["line"] for line in lines] == [1, 2, 3, 4, 5, 6]
    result = CliRunner().invoke(app, ["eval", "acme/tiny-llama", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "confusion matrix" in result.stdout
