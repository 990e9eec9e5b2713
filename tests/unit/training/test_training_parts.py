"""The loop's parts: schedule, split, the tasks' loss paths vs transformers, checkpoints
(optimiser state and RNG round-trip through safetensors), logs truncated on resume."""

from __future__ import annotations

import json

import pytest
import torch

from gptstore.data.types import IGNORE_INDEX, EncodedExample
from gptstore.training import checkpoint as ckpt
from gptstore.training.logs import RunLog, read_metrics
from gptstore.training.loop import decay_groups, lr_at
from gptstore.training.prepare import split_examples
from gptstore.training.tasks import get_task


def test_learning_rate_schedule():
    assert lr_at(0, 100, 10, 1.0, "linear") == pytest.approx(1 / 11)
    assert lr_at(9, 100, 10, 1.0, "linear") == pytest.approx(10 / 11)
    assert lr_at(10, 100, 10, 1.0, "linear") == 1.0
    assert lr_at(55, 100, 10, 1.0, "linear") == pytest.approx(0.5)
    assert lr_at(99, 100, 10, 1.0, "linear") == pytest.approx(1 / 90)
    assert lr_at(55, 100, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(10, 100, 10, 1.0, "cosine") == 1.0
    assert lr_at(80, 100, 10, 2.0, "constant") == 2.0
    assert lr_at(0, 10, 0, 1.0, "linear") == 1.0


def test_no_weight_decay_on_biases_and_norms(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    decay, plain = decay_groups(list(model.named_parameters()), 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all("norm" in names[id(p)] for p in plain["params"]) and plain["params"]
    assert all(p.ndim == 2 for p in decay["params"])


def test_split_is_stratified_and_seeded():
    examples = [EncodedExample([1, 2], label=i % 3, line=i) for i in range(60)]
    train, valid = split_examples(examples, 0.2, seed=0, stratify=True)
    assert len(valid) == 12 and len(train) == 48
    assert sorted(e.label for e in valid) == [0] * 4 + [1] * 4 + [2] * 4
    assert split_examples(examples, 0.2, seed=0, stratify=True)[1] == valid
    assert split_examples(examples, 0.2, seed=1, stratify=True)[1] != valid
    assert split_examples(examples, 0.0, seed=0, stratify=True) == (examples, [])


def _tiny(arch: str, folder, task_name: str):
    """The task's model of a tiny folder, built by the loader's own rules."""
    from transformers import AutoConfig

    from gptstore.inference.loader import auto_class, classifier_config

    config = AutoConfig.from_pretrained(folder)
    if task_name == "classification":
        classifier_config(config, ["a", "b", "c"], pad_id=3)
    model = auto_class(task_name).from_pretrained(folder, config=config, dtype=torch.float32)
    return get_task(task_name), model.eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_lm_loss_on_target_positions_equals_transformers(tiny_models, arch):
    task, model = _tiny(arch, tiny_models[arch], "causal-lm")
    examples = [EncodedExample([5, 6, 7, 8, 9], labels=[IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]),
                EncodedExample([10, 11, 12], labels=[IGNORE_INDEX, 11, 12])]
    batch = task.make_batch(examples, pad_id=3)
    assert batch.n_tokens == 8 and batch.n_targets == 5
    with torch.no_grad():
        terms = task.forward(model, batch)
        reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          labels=batch.labels).loss
    assert terms.count == 5
    assert float(terms.loss_sum) / terms.count == pytest.approx(float(reference), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_classifier_features_and_head_equal_transformers(tiny_models, arch):
    task, model = _tiny(arch, tiny_models[arch], "classification")
    examples = [EncodedExample([5, 6, 7, 8], label=0), EncodedExample([9, 10], label=2)]
    batch = task.make_batch(examples, pad_id=3)
    with torch.no_grad():
        full = task.forward(model, batch)
        head_only = task.forward(model, batch, frozen_backbone=True)
        batch.features = task.features(model, batch)
        cached = task.forward(model, batch)
    assert float(full.loss_sum) == pytest.approx(float(head_only.loss_sum), rel=1e-5)
    assert float(full.loss_sum) == pytest.approx(float(cached.loss_sum), rel=1e-5)
    assert full.targets == [0, 2] and len(full.predictions) == 2
    stats = task.metrics(_stats(full))
    assert set(stats) == {"loss", "accuracy", "macro_f1"}


def _stats(terms):
    from gptstore.training.tasks import Stats

    stats = Stats()
    stats.add(terms)
    return stats


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_checkpoint_round_trip_continues_identically(tmp_path, optimizer):
    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(8, 1))
        opt = (torch.optim.AdamW(model.parameters(), lr=1e-2) if optimizer == "adamw"
               else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
        return model, opt

    def step(model, opt):
        loss = model(torch.ones(3, 4)).pow(2).mean()  # dropout draws from torch's RNG
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss.detach())

    model, opt = build()
    for _ in range(3):
        step(model, opt)
    state = ckpt.TrainState(step=3, epoch=1, window=2, best={"loss": 0.5, "step": 2})
    state.add_point("train_loss", 3, 0.25)
    path = ckpt.save_checkpoint(tmp_path, state, model, opt, {"seed": 0})
    expected = [step(model, opt) for _ in range(3)]

    model2, opt2 = build()
    loaded = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert loaded.path == path and loaded.state == state and loaded.config == {"seed": 0}
    ckpt.restore(loaded, model2, opt2)
    assert [step(model2, opt2) for _ in range(3)] == expected
    # only safetensors and JSON on disk
    assert sorted(p.name for p in path.iterdir()) == ["optimizer.safetensors", "state.json",
                                                      "trainable.safetensors"]
    json.loads((path / "state.json").read_text())


def test_only_the_newest_checkpoint_is_kept(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, ckpt.TrainState(step=step), model, opt, {})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000006"]
    ckpt.clear_run(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_logs_drop_entries_after_the_resumed_step(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 6):
        log.scalars("train", step, {"loss": 1.0 / step, "note": "text is skipped"})
    log.scalars("valid", 4, {"loss": 0.3})
    log.close()
    resumed = RunLog(tmp_path, resume_step=3)
    resumed.scalars("train", 4, {"loss": 0.2})
    resumed.close()
    entries = read_metrics(tmp_path)
    assert [(e["split"], e["step"]) for e in entries] == [("train", 1), ("train", 2),
                                                         ("train", 3), ("train", 4)]
    assert "note" not in entries[0]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_short_attention_equals_sdpa_with_and_without_padding(tiny_models, arch):
    from transformers import AutoModelForCausalLM

    from gptstore.training import attention

    name = attention.register()
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_models[arch], attn_implementation="sdpa")
    short = AutoModelForCausalLM.from_pretrained(tiny_models[arch], attn_implementation=name)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 3, 3, 3]])
    for mask in (torch.ones_like(ids), torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])):
        keep = mask.bool()
        with torch.no_grad():
            expected = sdpa.eval()(input_ids=ids, attention_mask=mask).logits[keep]
            got = short.eval()(input_ids=ids, attention_mask=mask).logits[keep]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # long batches go to SDPA itself
    long_ids = torch.randint(5, 100, (1, attention.SHORT_MAX_TOKENS + 8))
    with torch.no_grad():
        torch.testing.assert_close(short(input_ids=long_ids).logits,
                                   sdpa(input_ids=long_ids).logits, atol=1e-5, rtol=1e-5)
