"""Classification through the engine: probabilities match transformers / PEFT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from inference_helpers import causal_spec, load_causal

from gptstore.errors import InvalidRequest
from gptstore.inference import ModelSpec

TEXTS = ["This movie was great, I loved it.", "terrible", "The food was good and the "
         "service was friendly, but the plot was dull.", "ok"]
LABELS = ["negative", "neutral", "positive"]


def make_classifier(base_dir: Path, out: Path) -> Path:
    """A sequence-classification model (random head) saved as a HF folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=3, id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)})
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def load_classifier(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def reference_probs(model: Any, tokenizer: Any, texts: list[str]) -> list[list[float]]:
    out = []
    with torch.inference_mode():
        for text in texts:  # one by one: no padding involved in the reference
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            out.append(torch.softmax(model(input_ids=ids).logits[0].float(), -1).tolist())
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_classifier_probabilities_match_transformers(tiny_dirs, make_engine, tmp_path, arch):
    folder = make_classifier(tiny_dirs[arch], tmp_path / "cls")
    spec = ModelSpec(base_key="cls", base_loader=lambda: load_classifier(folder),
                     task="classification")
    engine = make_engine({"c": spec}, max_step_tokens=16)  # several batches of texts
    got = engine.classify("c", TEXTS)
    expected = reference_probs(*load_classifier(folder), TEXTS)
    for row, ref in zip(got, expected, strict=True):
        assert [label for label, _ in row] == LABELS
        assert [p for _, p in row] == pytest.approx(ref, abs=1e-5)


def test_short_texts_are_classified_on_the_fp32_weights_where_decoding_uses_a_copy(
        tiny_dirs, make_engine, tmp_path):
    """Where an fp32 model decodes small steps on a bf16 copy, a batch of short texts
    (a few rows) is classified on the fp32 weights all the same: a text's probabilities
    do not depend on what it was batched with."""
    from gptstore.inference import native

    if native.library() is None:
        pytest.skip("the native kernels do not build on this CPU")
    folder = make_classifier(tiny_dirs["llama"], tmp_path / "cls")
    spec = ModelSpec(base_key="cls", base_loader=lambda: load_classifier(folder),
                     task="classification")
    engine = make_engine({"c": spec}, decode_dtype="bfloat16", gemv="native", gemv_rows=16)
    texts = ["terrible", "ok"]  # a few tokens each: a step the copy would serve
    got = engine.classify("c", texts)
    expected = reference_probs(*load_classifier(folder), texts)
    for row, ref in zip(got, expected, strict=True):
        assert [p for _, p in row] == pytest.approx(ref, abs=1e-5)


def test_classification_adapter_on_a_shared_causal_base(tiny_dirs, make_engine, tmp_path):
    """A PEFT LoRA adapter trained on a *ForSequenceClassification model (its head saved
    via modules_to_save) served on the causal LM base that generation also uses."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir = tiny_dirs["llama"]
    cls_dir = make_classifier(base_dir, tmp_path / "cls")
    model, tokenizer = load_classifier(cls_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS",
                                                  target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")

    specs = {
        "gen": causal_spec(base_dir, "base"),
        "sent": ModelSpec(base_key="base", base_loader=lambda: load_causal(base_dir),
                          adapter_dir=tmp_path / "adapter", task="classification",
                          label_names=LABELS),
    }
    engine = make_engine(specs)
    got = engine.classify("sent", TEXTS)
    reference = PeftModel.from_pretrained(load_classifier(cls_dir)[0], tmp_path / "adapter")
    expected = reference_probs(reference.eval(), tokenizer, TEXTS)
    for row, ref in zip(got, expected, strict=True):
        assert [p for _, p in row] == pytest.approx(ref, abs=1e-5)
    assert list(engine.stats()["loaded"]) == ["base"]  # one base for both tasks


def test_classify_refuses_generation_models_and_vice_versa(tiny_dirs, make_engine, tmp_path):
    folder = make_classifier(tiny_dirs["gpt2"], tmp_path / "cls")
    specs = {"gen": causal_spec(tiny_dirs["gpt2"]),
             "cls": ModelSpec(base_key="cls", base_loader=lambda: load_classifier(folder),
                              task="classification"),
             "headless": ModelSpec(base_key=str(tiny_dirs["gpt2"]),
                                   base_loader=lambda: load_causal(tiny_dirs["gpt2"]),
                                   task="classification")}
    engine = make_engine(specs)
    with pytest.raises(InvalidRequest, match="not a classifier"):
        engine.classify("gen", ["hi"])
    with pytest.raises(InvalidRequest, match="no classifier head"):
        engine.classify("headless", ["hi"])
    from gptstore.inference import GenerationRequest

    with pytest.raises(InvalidRequest, match="classification"):
        engine.submit(GenerationRequest([5, 6], "cls"))


def test_generic_runner_classifies_too(tiny_dirs, make_engine, tmp_path):
    folder = make_classifier(tiny_dirs["gpt2"], tmp_path / "cls")
    spec = ModelSpec(base_key="cls", base_loader=lambda: load_classifier(folder),
                     task="classification")
    engine = make_engine({"c": spec}, use_fast_path=False)
    got = engine.classify("c", TEXTS[:2])
    expected = reference_probs(*load_classifier(folder), TEXTS[:2])
    for row, ref in zip(got, expected, strict=True):
        assert [p for _, p in row] == pytest.approx(ref, abs=1e-5)
