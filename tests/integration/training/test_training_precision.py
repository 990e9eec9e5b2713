"""A fine-tune's precision: `auto` follows this machine's measured training choice
(the home's cached profile), and an explicit `precision` wins over it."""

from __future__ import annotations

import json

import pytest

from gptstore.inference import precision
from gptstore.inference.precision import MachineProfile, machine_key
from gptstore.training import finetune


def cache_choice(home, training: str) -> None:
    rates = {use: {"fp32": 100.0, "bf16": 300.0 if training == "bf16" else 50.0}
             for use in precision.USES}
    doc = MachineProfile(key=machine_key(), cpu="test CPU", torch="x", threads=1, flags=[],
                         gflops=rates, choices={u: training for u in precision.USES})
    (home / precision.CACHE_FILE).write_text(json.dumps({doc.key: doc.to_dict()}))


@pytest.mark.parametrize(("measured", "asked", "ran"), [
    ("bf16", "auto", "bf16 autocast"),
    ("fp32", "auto", "fp32"),
    ("bf16", "fp32", "fp32"),
    ("fp32", "bf16", "bf16 autocast"),
])
def test_auto_precision_is_the_measured_one_and_explicit_wins(store, config_for, measured,
                                                              asked, ran):
    settings, catalog = store
    # the suite pins fp32 for runs left at auto (conftest); this test is about auto itself
    settings = settings.model_copy(update={"training_precision": "auto"})
    cache_choice(settings.home, measured)
    name = f"acme/precision-{measured}-{asked}"
    record = finetune(config_for("classification", "lora", "llama", name, precision=asked,
                                 max_steps=2, epochs=1), settings=settings,
                      catalog=catalog).record
    assert record.precision == ran
    assert record.config.precision == ("bf16" if ran.startswith("bf16") else "fp32")
