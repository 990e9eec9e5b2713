"""A classification fine-tune starts from zero-shot: evaluated before its first step, it
scores exactly what the base model scores zero-shot on the same data."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gptstore.evaluation.runner import evaluate_model
from gptstore.training.evaluate import evaluate_examples
from gptstore.training.head_init import FRESH, VERBALIZERS, init_head_from_verbalizers
from gptstore.training.loop import FineTuneRun
from gptstore.training.tasks import hf_model


def _run_before_first_step(store, config):
    settings, catalog = store
    # fp32, whatever this machine measured best: the comparisons below are exact to 1e-5
    # and run the model outside the loop's autocast
    run = FineTuneRun(replace(config, precision="fp32"), settings, catalog, ())
    run._check_store()
    run._prepare()
    run._build_model()
    run.method.set_mode(run.model, run.task, False)
    return run


@pytest.mark.parametrize(("arch", "method"), [("gpt2", "lora"), ("llama", "lora"),
                                              ("llama", "full"), ("gpt2", "head")])
def test_evaluation_before_the_first_step_equals_zero_shot(store, config_for, data, arch,
                                                           method):
    # gpt2 ties its LM head to the embeddings; the tiny llama has its own lm_head.weight
    _, catalog = store
    # fp32 on both sides: the comparison is of the same arithmetic
    run = _run_before_first_step(store, config_for("classification", method, arch,
                                                   f"acme/step0-{arch}-{method}",
                                                   precision="fp32"))
    assert run.describe["head_init"] == VERBALIZERS
    zero_shot = evaluate_model(catalog, f"acme/tiny-{arch}", data["cls_valid"])

    # per example: the classifier's probabilities equal zero-shot's over the label words
    model = hf_model(run.model)
    with torch.no_grad():
        for example, row in zip(run.valid_examples, zero_shot.predictions, strict=True):
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            probs = torch.softmax(logits.float(), -1).tolist()
            assert probs == pytest.approx([row["probabilities"][label]
                                           for label in run.data.label_names], abs=1e-5)

    # and the loop's own validation gives zero-shot's accuracy and loss
    metrics = evaluate_examples(run.model, run.task, run.valid_examples, pad_id=run.pad_id,
                                bf16=False)
    assert metrics["accuracy"] == zero_shot.metrics["accuracy"]
    assert metrics["loss"] == pytest.approx(zero_shot.metrics["loss"], abs=1e-5)
    assert metrics["macro_f1"] == pytest.approx(zero_shot.metrics["macro_f1"], abs=1e-9)


def test_labels_that_are_not_words_get_a_fresh_head(store):
    from gptstore.inference.loader import load_version

    _, catalog = store
    loaded = load_version(catalog, "acme/tiny-gpt2", task="classification",
                          label_names=["0", "1"], dtype=torch.float32)
    before = loaded.model.score.weight.clone()
    assert init_head_from_verbalizers(loaded.model, loaded.folder, loaded.tokenizer,
                                      ["0", "1"]) == FRESH
    assert torch.equal(loaded.model.score.weight, before)
    loaded = load_version(catalog, "acme/tiny-gpt2", task="classification",
                          label_names=["negative", "positive"], dtype=torch.float32)
    assert init_head_from_verbalizers(loaded.model, loaded.folder, loaded.tokenizer,
                                      ["negative", "positive"]) == VERBALIZERS
    embeddings = loaded.model.get_input_embeddings().weight
    ids = [loaded.tokenizer(f" {w}", add_special_tokens=False)["input_ids"][0]
           for w in ("negative", "positive")]
    assert torch.equal(loaded.model.score.weight, embeddings[ids])


def test_head_init_fresh_keeps_the_random_head(store, config_for):
    run = _run_before_first_step(store, config_for("classification", "lora", "gpt2",
                                                   "acme/step0-fresh", head_init="fresh"))
    assert run.describe["head_init"] == "fresh"
    embeddings = hf_model(run.model).get_input_embeddings().weight
    ids = [run.data.tokenizer(f" {w}", add_special_tokens=False)["input_ids"][0]
           for w in run.data.label_names]
    score = hf_model(run.model).score.modules_to_save["default"].weight
    assert not torch.allclose(score.float(), embeddings[ids].float())


def test_a_rerun_with_other_settings_reuses_the_zero_shot_validation(store, config_for, data,
                                                                      tmp_path, monkeypatch):
    import shutil

    from gptstore.training import loop, zero_shot
    from gptstore.training.loop import finetune

    settings, catalog = store
    shutil.rmtree(settings.home / zero_shot.FOLDER, ignore_errors=True)
    computed = []
    real_evaluate = loop.evaluate_examples

    def counting(*args, **kwargs):
        computed.append(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_examples", counting)

    def step0(name, valid=None, **overrides):
        """The run's step-0 validation event and how many validations it computed."""
        events = []
        config = config_for("classification", "lora", "llama", name, epochs=1, max_steps=2,
                            precision="fp32", **overrides)
        if valid is not None:
            config = replace(config, valid_file=str(valid))
        computed.clear()
        finetune(config, settings=settings, catalog=catalog,
                 callbacks=[lambda e: events.append(e) if e.kind == "eval" else None])
        assert events[0].step == 0
        return events[0].values, len(computed)

    first, n_first = step0("acme/reuse-a", lora_r=4)
    assert not first["reused"] and n_first == 2  # step 0 and the end
    # other rank, learning rate and targets: the same starting point, not computed again
    second, n_second = step0("acme/reuse-b", lora_r=8, learning_rate=1e-3,
                             lora_target=["q_proj", "v_proj"])
    assert second["reused"] and n_second == 1
    keys = ("loss", "accuracy", "macro_f1")
    assert {k: second[k] for k in keys} == {k: first[k] for k in keys}
    # computed afresh for that configuration, it is the same
    shutil.rmtree(settings.home / zero_shot.FOLDER)
    fresh, n_fresh = step0("acme/reuse-c", lora_r=8, learning_rate=1e-3,
                           lora_target=["q_proj", "v_proj"])
    assert not fresh["reused"] and n_fresh == 2
    assert {k: fresh[k] for k in keys} == {k: first[k] for k in keys}
    # other validation data: computed
    fewer = tmp_path / "valid.jsonl"
    fewer.write_text("".join(data["cls_valid"].read_text().splitlines(keepends=True)[:-3]))
    other, n_other = step0("acme/reuse-d", valid=fewer)
    assert not other["reused"] and n_other == 2


def test_a_damaged_zero_shot_record_is_computed_again(tmp_path):
    from gptstore.training import zero_shot

    assert zero_shot.read(tmp_path, "k") is None
    zero_shot.write(tmp_path, "k", {"accuracy": 0.5, "loss": 0.7})
    assert zero_shot.read(tmp_path, "k") == {"accuracy": 0.5, "loss": 0.7}
    (tmp_path / zero_shot.FOLDER / "k.json").write_text('{"metrics": {"accuracy": "x"')
    assert zero_shot.read(tmp_path, "k") is None
    assert not list((tmp_path / zero_shot.FOLDER).glob("*.tmp"))
