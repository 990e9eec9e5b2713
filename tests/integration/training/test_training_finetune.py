"""Fine-tuning end to end on tiny models: every task x method learns, classification
separates a separable set, and the published version carries lineage, metrics, card."""

from __future__ import annotations

import json

import pytest
import torch

from gptstore.errors import InvalidRequest
from gptstore.training import finetune
from gptstore.training.logs import read_metrics

CASES = [
    ("classification", "lora", "llama", {}),
    ("classification", "full", "gpt2", {}),
    ("classification", "head", "llama", {}),
    # a random 32-wide model's logits are tiny: LoRA on attention alone moves them slowly
    ("causal-lm", "lora", "gpt2", {"lora_target": "c_attn,c_proj,c_fc"}),
    ("causal-lm", "full", "llama", {}),
    ("causal-lm", "head", "gpt2", {}),
]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize(("task", "method", "arch", "extra"), CASES)
def test_each_task_and_method_learns(store, config_for, task, method, arch, extra):
    settings, catalog = store
    name = f"acme/learn-{task}-{method}"
    result = finetune(config_for(task, method, arch, name, **extra), settings=settings,
                      catalog=catalog).record
    losses = [v for _, v in result_curve(catalog, name, "train_loss")]
    steps_per_epoch = 12 if task == "classification" else 6  # 96 or 48 examples / 8
    assert len(losses) == result.steps == 4 * steps_per_epoch
    first, last = _mean(losses[:3]), _mean(losses[-3:])
    assert last < first - 0.25, (first, last)
    version = catalog.resolve(name)
    assert version.kind == ("full" if method == "full" else "adapter")
    assert version.task == task
    assert result.train_tokens > 0 and result.tokens_per_second > 0
    if task == "classification":
        assert result.final["accuracy"] >= 0.75
    else:
        assert result.final["loss"] < losses[0] - 0.25
        assert result.final["token_accuracy"] >= 0.5


def result_curve(catalog, name: str, curve: str) -> list[list[float]]:
    return catalog.resolve(name).metrics["curves"][curve]


def test_classification_reaches_high_accuracy(store, config_for):
    settings, catalog = store
    config = config_for("classification", "lora", "llama", "acme/sentiment", epochs=6,
                        eval_every=12, early_stopping_patience=0)
    result = finetune(config, settings=settings, catalog=catalog).record
    assert result.final["accuracy"] >= 0.95
    assert result.final["macro_f1"] >= 0.95


def test_published_version_carries_lineage_metrics_and_card(store, config_for, data):
    settings, catalog = store
    config = config_for("classification", "lora", "gpt2", "acme/carded", eval_every=12,
                        save_every=24, description="toy sentiment", tags=["toy"])
    result = finetune(config, settings=settings, catalog=catalog).record
    version = catalog.resolve("acme/carded")
    lineage = version.lineage
    assert lineage["source"] == "finetune"
    assert lineage["base"] == catalog.resolve("acme/tiny-gpt2").ref == version.base
    assert lineage["task"] == "classification" and lineage["method"] == "lora"
    assert lineage["dataset"]["digest"].startswith("sha256:")
    assert lineage["dataset"]["examples"] == 96 and lineage["dataset"]["name"] == "cls_train.jsonl"
    assert lineage["valid_dataset"]["examples"] == 24
    assert lineage["label_names"] == ["negative", "positive"]
    assert lineage["seed"] == 0 and "gptstore" in lineage["code_version"]
    hyper = lineage["hyperparameters"]
    assert hyper["learning_rate"] == config.learning_rate and hyper["lora_r"] == 8
    # auto: every projection; the lineage names the modules that got adapters
    assert hyper["lora_target"] == ["all-linear"] and "lora_target" in lineage["auto"]
    assert lineage["lora_target"] == ["c_attn", "c_fc", "c_proj"]
    assert lineage["published_checkpoint"]["step"] == result.published_step
    assert "lora_alpha" in lineage["auto"] and hyper["lora_alpha"] == 16
    metrics = version.metrics
    assert metrics["final"]["accuracy"] == result.final["accuracy"]
    assert metrics["best"]["step"] == result.best["step"]
    assert metrics["train"]["tokens"] == result.train_tokens
    assert len(metrics["curves"]["train_loss"]) == result.steps
    # step 0 too: the verbaliser head starts at the base's zero-shot answer
    assert [p[0] for p in metrics["curves"]["valid_loss"]] == [0, 12, 24, 36, 48]
    card = catalog.card(version)
    assert "## Lineage" in card and "### Training curves" in card
    assert "negative, positive" in card and "toy sentiment" in card
    assert "final accuracy" in card
    # logs: metrics.jsonl and TensorBoard events; checkpoints dropped after publishing
    run_dir = settings.runs_dir / "acme--carded"
    entries = read_metrics(run_dir)
    assert [e["step"] for e in entries if e["split"] == "valid"] == [0, 12, 24, 36, 48]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir / "checkpoints").exists()
    json.dumps(version.to_dict())  # everything stored is plain JSON


def test_adapter_version_stores_only_the_adapter(store, config_for):
    settings, catalog = store
    finetune(config_for("causal-lm", "lora", "llama", "acme/adapter-only", epochs=1),
             settings=settings, catalog=catalog)
    version = catalog.resolve("acme/adapter-only")
    base = catalog.resolve("acme/tiny-llama")
    assert {f.path for f in version.files} == {"README.md", "adapter_config.json",
                                                "adapter_model.safetensors"}
    assert version.kind == "adapter" and version.base == base.ref
    assert version.size < base.size / 5
    config = json.loads(catalog.read_file(version, "adapter_config.json"))
    assert config["base_model_name_or_path"] == base.ref
    assert config["task_type"] == "CAUSAL_LM"


def test_head_only_classifier_stores_the_head_only(store, config_for):
    settings, catalog = store
    finetune(config_for("classification", "head", "gpt2", "acme/probe", epochs=1),
             settings=settings, catalog=catalog)
    version = catalog.resolve("acme/probe")
    from safetensors.torch import load

    tensors = load(catalog.read_file(version, "adapter_model.safetensors"))
    trained = [k for k in tensors if "lora_" not in k]
    assert trained and all("score" in k for k in trained)
    assert all(float(t.abs().sum()) == 0 for k, t in tensors.items() if "lora_B" in k)


def test_loraplus_moves_the_b_matrices_faster(store, config_for):
    """LoRA+: after one AdamW step from B = 0 (A's gradient is zero there), each B weight
    moved by about the learning rate, times loraplus_lr_ratio for B's group."""
    settings, catalog = store
    from safetensors.torch import load

    moved = {}
    for ratio in (1.0, 16.0):
        name = f"acme/loraplus-{int(ratio)}"
        finetune(config_for("causal-lm", "lora", "llama", name, max_steps=1, warmup_ratio=0.0,
                            schedule="constant", learning_rate=1e-4, weight_decay=0.0,
                            loraplus_lr_ratio=ratio),
                 settings=settings, catalog=catalog)
        tensors = load(catalog.read_file(catalog.resolve(name), "adapter_model.safetensors"))
        moved[ratio] = max(float(t.abs().max()) for k, t in tensors.items() if "lora_B" in k)
    assert moved[1.0] == pytest.approx(1e-4, rel=0.05)
    assert moved[16.0] == pytest.approx(16e-4, rel=0.05)


def test_loraplus_ratio_below_one_is_refused(config_for):
    with pytest.raises(InvalidRequest, match="loraplus_lr_ratio") as raised:
        config_for("causal-lm", "lora", "llama", "acme/x", loraplus_lr_ratio=0.5)
    assert raised.value.param == "loraplus_lr_ratio"


def test_ema_publishes_the_moving_average_of_the_steps(store, config_for):
    """With ema_decay the published adapter is the average of the steps' weights, with
    the short early horizon: after 2 updates w0 + 9/11 (w1 - w0), then + 3/4 (w2 - it)."""
    settings, catalog = store
    from safetensors.torch import load

    common = {"warmup_ratio": 0.0, "schedule": "constant", "learning_rate": 1e-3,
              "weight_decay": 0.0, "precision": "fp32", "shards": 1}
    weights, valid_loss = {}, {}
    for steps, decay in ((1, 0.0), (2, 0.0), (2, 0.95)):
        name = f"acme/ema-{steps}-{int(decay * 100)}"
        record = finetune(config_for("causal-lm", "lora", "llama", name, max_steps=steps,
                                     ema_decay=decay, **common),
                          settings=settings, catalog=catalog).record
        weights[steps, decay] = load(catalog.read_file(catalog.resolve(name),
                                                       "adapter_model.safetensors"))
        valid_loss[steps, decay] = record.final["loss"]
    # the validation read the average too, not the weights of the last step
    assert valid_loss[2, 0.95] != valid_loss[2, 0.0]
    one, two, averaged = weights[1, 0.0], weights[2, 0.0], weights[2, 0.95]
    checked = 0
    for key, tensor in averaged.items():
        # B starts at 0; A's gradient is 0 while B is, so A did not move in step 1
        start = one[key] * 0 if "lora_B" in key else one[key]
        first = start + (9 / 11) * (one[key] - start)
        expected = first + 0.75 * (two[key] - first)
        assert torch.allclose(tensor, expected, atol=1e-7), key
        assert not torch.equal(tensor, two[key]), key
        checked += 1
    assert checked


def test_ema_decay_outside_zero_to_one_is_refused(config_for):
    for bad in (1.0, -0.1, "high"):
        with pytest.raises(InvalidRequest, match="ema_decay") as raised:
            config_for("causal-lm", "lora", "llama", "acme/x", ema_decay=bad)
        assert raised.value.param == "ema_decay"


def test_same_seed_same_metrics_and_grad_accumulation(store, config_for):
    """Two runs with one seed agree exactly; 4 x 2 accumulated equals batches of 8."""
    settings, catalog = store
    common = {"epochs": 2, "group_by_length": False, "precision": "fp32", "dropout": 0.0,
              "lora_dropout": 0.0}
    a = finetune(config_for("causal-lm", "lora", "llama", "acme/seed-a", **common),
                 settings=settings, catalog=catalog).record
    b = finetune(config_for("causal-lm", "lora", "llama", "acme/seed-b", **common),
                 settings=settings, catalog=catalog).record
    assert a.final == b.final
    c = finetune(config_for("causal-lm", "lora", "llama", "acme/seed-c", batch_size=4,
                            grad_accum_steps=2, **common),
                 settings=settings, catalog=catalog).record
    assert c.steps == a.steps
    # metrics keep 6 decimals: a small loss differs in the last one
    assert c.final["loss"] == pytest.approx(a.final["loss"], rel=1e-4, abs=2e-6)


def test_early_stopping_publishes_the_best_checkpoint(store, config_for):
    settings, catalog = store
    # SGD at a huge learning rate: validation gets worse after the first steps
    config = config_for("classification", "full", "llama", "acme/stopped", optimizer="sgd",
                        learning_rate=5.0, eval_every=1, early_stopping_patience=2,
                        metric="loss", warmup_ratio=0.0)
    result = finetune(config, settings=settings, catalog=catalog).record
    assert result.stopped_early
    assert result.steps < 48
    assert result.best["step"] < result.steps
    assert result.final["loss"] == result.best["loss"] <= result.last["loss"]
    lineage = catalog.resolve("acme/stopped").lineage
    assert lineage["published_checkpoint"]["step"] == result.best["step"]


def test_every_training_format_trains(store, config_for, tmp_path):
    """Chat JSONL (loss on assistant turns), plain text, and CSV classification files all
    go through the same loop; the task comes from the format when left at auto."""
    settings, catalog = store
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"What is the capital of {country}?"},
        {"role": "assistant", "content": f"The capital of {country} is {city}."}]}) + "\n"
        for country, city in [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome")] * 8))
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\n" + "".join(
        f"the movie was {'great' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}\n"
        for i in range(30)))
    for path, task, name, fmt in ((chat, "causal-lm", "acme/fmt-chat", "chat"),
                                  (text, "causal-lm", "acme/fmt-text", "text"),
                                  (table, "classification", "acme/fmt-csv", "classification")):
        result = finetune(config_for("auto", "lora", "llama", name, train_file=str(path),
                                     valid_file=None, epochs=1, max_length=64),
                          settings=settings, catalog=catalog).record
        assert result.task == task and result.valid_data.examples > 0
        assert catalog.resolve(name).lineage["dataset"]["format"] == fmt
    assert catalog.resolve("acme/fmt-csv").lineage["label_names"] == ["neg", "pos"]


def test_shards_repeat_exactly_and_match_one_pass(store, config_for):
    """A micro-batch split over worker threads: the same seed gives the same metrics, and
    the result equals one pass up to float rounding."""
    settings, catalog = store
    common = {"epochs": 2, "precision": "fp32", "dropout": 0.0, "lora_dropout": 0.0}
    runs = [finetune(config_for("classification", "lora", "llama", f"acme/shards-{i}",
                                shards=shards, **common),
                     settings=settings, catalog=catalog).record
            for i, shards in enumerate((1, 2, 2))]
    assert runs[1].final == runs[2].final
    assert runs[1].final["loss"] == pytest.approx(runs[0].final["loss"], rel=1e-4, abs=2e-6)
    assert runs[1].train_tokens == runs[0].train_tokens
    assert catalog.resolve("acme/shards-1").lineage["hyperparameters"]["shards"] == 2
    with pytest.raises(InvalidRequest, match="shards") as info:
        finetune(config_for("classification", "lora", "llama", "acme/shards-dropout",
                            shards=2, lora_dropout=0.1), settings=settings, catalog=catalog)
    assert info.value.param == "shards"


@pytest.mark.parametrize(("arch", "expected"), [("gpt2", ["c_attn"]),
                                                ("llama", ["q_proj", "v_proj"])])
def test_lora_target_attention_is_pefts_default_for_the_architecture(store, config_for,
                                                                      arch, expected):
    settings, catalog = store
    config = config_for("causal-lm", "lora", arch, f"acme/attention-{arch}",
                        lora_target="attention", max_steps=1)
    finetune(config, settings=settings, catalog=catalog)
    lineage = catalog.resolve(f"acme/attention-{arch}").lineage
    assert lineage["hyperparameters"]["lora_target"] == ["attention"]
    assert lineage["lora_target"] == expected  # the modules that got adapters
