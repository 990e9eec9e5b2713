"""Fixtures of the inference tests: tiny random models, a resolver, engines.

The tiny models use a larger initialiser range than the shared ones (0.2 instead of
0.02) so their greedy outputs vary from token to token and their top logits are well
separated: parity tests then compare real choices, not near-ties.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gptstore.errors import NotFound
from gptstore.inference import Engine, EngineConfig, ModelSpec


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """A test that steps a scheduler on its own thread (start=False) leaves that step's
    intra-op threads on the main thread: later tests get torch's count back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gptstore.testing.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("tiny-inference")
    return {arch: make_tiny_model(arch, root / arch, seed=0, initializer_range=0.2)
            for arch in ("gpt2", "llama")}


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    """Build engines over a {name: spec factory} table; all are shut down afterwards."""
    engines: list[Engine] = []

    def make(specs: dict[str, ModelSpec], start: bool = True, **config: Any) -> Engine:
        def resolve(name: str) -> ModelSpec:
            if name not in specs:
                raise NotFound(f"no model {name}")
            return specs[name]

        engine = Engine(resolve, EngineConfig(**config), start=start)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()
