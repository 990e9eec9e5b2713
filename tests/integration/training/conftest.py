"""Fixtures of the training tests: one store per module with the tiny GPT-2 and Llama
imported, and generated toy data sets (learnable in a few dozen steps)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptstore.settings import Settings

SUBJECTS = ["the movie", "the food", "the plot", "the service", "the acting", "it"]
FILLERS = ["", "honestly ", "I think ", "overall ", "to be fair "]
POSITIVE = ["great", "good", "friendly", "loved"]
NEGATIVE = ["terrible", "bad", "dull", "hated"]
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome")]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Separable toy sentiment: the last word decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        text = f"{rng.choice(FILLERS)}{rng.choice(SUBJECTS)} was {word}"
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    return rows


def capital_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt/completion pairs a tiny LM learns fast: the capital of a country."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        country, city = rng.choice(CAPITALS)
        rows.append({"prompt": f"{rng.choice(FILLERS)}the capital of {country} is",
                     "completion": f" {city}."})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and a shared 2-core machine makes two
    threads wait on each other (OpenMP barriers) when another process takes a core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
          ) -> Iterator[tuple[Settings, Any]]:
    """(settings, catalog) of a store holding acme/tiny-llama and acme/tiny-gpt2."""
    from gptstore.catalog.importers import import_path
    from gptstore.catalog.repository import Catalog

    home = tmp_path_factory.mktemp("store")
    settings = Settings(home=home, offline=True)
    catalog = Catalog(settings)
    for arch, folder in tiny_models.items():
        import_path(catalog, folder, f"acme/tiny-{arch}")
    yield settings, catalog
    catalog.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "cls_train": write_jsonl(folder / "cls_train.jsonl", sentiment_rows(96, seed=1)),
        "cls_valid": write_jsonl(folder / "cls_valid.jsonl", sentiment_rows(24, seed=2)),
        "lm_train": write_jsonl(folder / "lm_train.jsonl", capital_rows(48, seed=1)),
        "lm_valid": write_jsonl(folder / "lm_valid.jsonl", capital_rows(12, seed=2)),
    }


#: learning rates that make the tiny random models learn in a few dozen steps. LoRA was
#: 1e-2 while it covered q,v only; on every projection (the default since) that rate
#: drove the tiny classifier's loss to ~0.005 and then into spikes up to 1.4 on an AMX
#: CPU (the last three steps averaged 0.53 against 0.64 at the start); 5e-3 descends
#: steadily to 0.007 there
TINY_LR = {"lora": 5e-3, "full": 3e-3, "head": 3e-2}


@pytest.fixture(scope="module")
def config_for(data: dict[str, Path]) -> Any:
    """Build a TrainConfig for a tiny model: config_for(task, method, arch, name, **kw)."""
    from gptstore.training import TrainConfig

    def build(task: str, method: str, arch: str, name: str, **overrides: Any) -> Any:
        kind = "cls" if task == "classification" else "lm"
        values: dict[str, Any] = {
            "base": f"acme/tiny-{arch}", "train_file": str(data[f"{kind}_train"]),
            "valid_file": str(data[f"{kind}_valid"]), "name": name, "task": task,
            "method": method, "epochs": 4, "batch_size": 8, "learning_rate": TINY_LR[method],
            "eval_every": 0, "save_every": 0, "warmup_ratio": 0.1,
        }
        values.update(overrides)
        return TrainConfig(**values)

    return build
