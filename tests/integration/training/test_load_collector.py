"""Loads run with Python's cyclic collector paused (inference/loader.py
`collection_paused`): off while any thread loads, back as it was when the last is done."""

from __future__ import annotations

import gc
import threading
from typing import Any

import torch

from gptstore.inference.loader import collection_paused, load_tokenizer, load_version


def test_the_collector_is_off_while_loading_and_back_after(store: Any) -> None:
    _, catalog = store
    seen: list[bool] = []
    assert gc.isenabled()
    loaded = load_version(catalog, "acme/tiny-llama", dtype=torch.float32,
                          configure=lambda config: seen.append(gc.isenabled()))
    assert seen == [False] and gc.isenabled()
    assert loaded.model is not None
    load_tokenizer(catalog, "acme/tiny-llama")
    assert gc.isenabled()


def test_overlapping_loads_keep_it_off_until_the_last_ends() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    states: dict[str, bool] = {}

    def first() -> None:
        with collection_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with collection_paused():
            second_in.set()
            first_out.wait(10)
            states["after the first ended"] = gc.isenabled()
        states["after both"] = gc.isenabled()

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert states == {"after the first ended": False, "after both": True}


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    try:
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
