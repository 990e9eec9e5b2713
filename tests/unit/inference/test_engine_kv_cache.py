"""The slot KV cache: dense slots, compaction on release, memory that follows the filled
positions, growth, failure isolation."""

from __future__ import annotations

import mmap
import sys
import time

import pytest
import torch
from inference_helpers import causal_spec, hf_greedy, load_causal

from gptstore.inference import GenerationRequest, SamplingParams, kv_cache
from gptstore.inference.kv_cache import SlotKVCache


def _cache(slots: int = 3) -> SlotKVCache:
    return SlotKVCache(n_layers=2, n_kv_heads=1, head_dim=2, max_slots=slots, max_length=1024,
                       dtype=torch.float32)


def test_release_moves_the_last_slot_into_the_hole():
    cache = _cache()
    a, b, c = (cache.allocate() for _ in range(3))
    cache.ensure_capacity(4)
    for slot, value in ((a, 1.0), (b, 2.0), (c, 3.0)):
        cache.k[:, slot.index, :, :4] = value
        slot.length = 4
    cache.release(a)
    assert (c.index, b.index, a.index) == (0, 1, -1)
    assert cache.k[:, 0, :, :4].eq(3.0).all() and cache.k[:, 1, :, :4].eq(2.0).all()
    if sys.platform == "linux":  # the moved slot's old place went back to the system
        assert cache.k[:, 2].eq(0).all()
    assert cache.free_slots == 1
    cache.release(a)  # twice is harmless
    assert cache.free_slots == 1


def _grows_keeping_contents(cache: SlotKVCache, first: int, needed: int, grown: int) -> None:
    slot = cache.allocate()
    cache.ensure_capacity(10)
    assert cache.capacity == first
    cache.v[:, 0, :, :10] = 7.0
    slot.length = 10
    cache.ensure_capacity(needed)
    assert cache.capacity == grown
    assert cache.v[:, 0, :, :10].eq(7.0).all() and cache.v[:, 0, :, 10:].eq(0).all()
    cache.release(slot)
    assert cache.nbytes == 0 and cache.k.shape == (0,)


def test_a_reservation_shorter_than_the_context_grows_keeping_contents():
    """A cache whose full context on every slot exceeds `reserve_bytes` (a 128k-token
    model) reserves less first, and grows by copying what the live slots filled."""
    per_position = 2 * 2 * 3 * 1 * 2 * 4  # k and v, layers, slots, heads, head_dim, fp32
    cache = SlotKVCache(n_layers=2, n_kv_heads=1, head_dim=2, max_slots=3, max_length=1024,
                        dtype=torch.float32, reserve_bytes=100 * per_position)
    _grows_keeping_contents(cache, first=100, needed=300, grown=300)


def test_under_strict_overcommit_the_cache_reserves_as_it_grows(monkeypatch):
    """Where every mapped byte is charged (vm.overcommit_memory=2), a reservation of the
    full context would take memory nobody uses: the cache reserves 128 positions first
    and doubles, as the sequences need."""
    monkeypatch.setattr(kv_cache, "_reservations_cost_memory", lambda: True)
    _grows_keeping_contents(_cache(), first=128, needed=129, grown=256)


def _resident_bytes(cache: SlotKVCache) -> int:
    """Memory backing the cache's keys and values: the pages of their address range that
    hold a page of this process's own (Linux's /proc/self/pagemap: present and mapped
    exclusively, so the shared zero page a read of an untouched page maps is not
    counted). Not the mapping's Rss in smaps: the kernel may merge it with a neighbouring
    mapping of the same kind (another test's cache) and report their pages together."""
    if not cache.k.numel():
        return 0
    page = mmap.PAGESIZE
    start = cache.k.data_ptr() // page
    end = -(-(cache.v.data_ptr() + cache.v.numel() * cache.v.element_size()) // page)
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start * 8)
        entries = memoryview(f.read((end - start) * 8)).cast("Q")
    present, exclusive = 1 << 63, 1 << 56
    return page * sum(1 for e in entries if e & present and e & exclusive)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/pagemap")
def test_memory_follows_the_positions_the_live_slots_filled():
    """The cache reserves every slot at the full context as address space; memory backs
    only the pages written (reading the rest gives zeros and takes none), and a released
    slot's pages go back. Before, sixteen requests arriving together zero-filled the
    cache of all sixteen slots (140-240 ms of their first token on an AVX2 EPYC VM)."""
    cache = SlotKVCache(n_layers=4, n_kv_heads=2, head_dim=64, max_slots=16,
                        max_length=4096, dtype=torch.float32)
    per_slot = 40 * 2 * 4 * 2 * 64 * 4  # 40 positions of k and v, 4 layers, 2 heads, fp32
    first = cache.allocate()
    cache.ensure_capacity(40)
    assert cache.capacity == 4096 and cache.k.shape[1] == 16
    assert _resident_bytes(cache) < 64 * 1024  # reserved, not backed
    slots = [first] + [cache.allocate() for _ in range(15)]
    for value, slot in enumerate(slots, start=1):
        cache.k[:, slot.index, :, :40] = float(value)
        cache.v[:, slot.index, :, :40] = float(value)
        slot.length = 40
    # 16 positions of one head fill a 4 KiB page: 40 positions take three
    page_rounded = 16 * per_slot * 48 // 40
    assert cache.nbytes == 16 * per_slot
    assert 16 * per_slot <= _resident_bytes(cache) <= page_rounded + 64 * 1024
    assert cache.k[:, :, :, 40:1024].eq(0).all()  # unwritten positions read as zeros ...
    assert _resident_bytes(cache) <= page_rounded + 64 * 1024  # ... and take no memory
    for slot in slots[:15]:
        cache.release(slot)
    assert slots[15].index == 0 and cache.k[:, 0, :, :40].eq(16.0).all()
    assert cache.k[:, 1:].eq(0).all() and cache.v[:, 1:].eq(0).all()  # given back
    assert _resident_bytes(cache) <= page_rounded // 16 + 64 * 1024
    assert cache.nbytes == per_slot


def test_parity_across_cache_growth(tiny_dirs, make_engine, monkeypatch):
    # reserve only what a step needs (as a long-context model on many slots reserves
    # less than its context): the cache then grows, by doubling, while both decode
    monkeypatch.setattr(kv_cache, "_RESERVE_BYTES", 1)
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, start=False)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    long_prompt = [(7 * i) % 400 + 10 for i in range(115)]  # crosses 128 positions
    handles = [engine.submit(GenerationRequest(p, "m", params)) for p in (long_prompt, [5, 6])]
    engine.start()
    reference, _ = load_causal(tiny_dirs["llama"])
    assert handles[0].result(timeout=30).token_ids == hf_greedy(reference, long_prompt, 30)
    assert handles[1].result(timeout=30).token_ids == hf_greedy(reference, [5, 6], 30)


def test_a_failing_step_fails_its_requests_not_the_engine(tiny_dirs, make_engine, monkeypatch):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    engine.tokenizer("m")  # load the base
    runner = engine.registry._bases[str(tiny_dirs["gpt2"])].runner
    real_forward = runner.forward

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "forward", broken)
    handle = engine.submit(GenerationRequest([5, 6], "m", SamplingParams(max_tokens=3)))
    try:
        handle.result(timeout=30)
        raise AssertionError("the error should reach the caller")
    except RuntimeError as error:
        assert "boom" in str(error)
    monkeypatch.setattr(runner, "forward", real_forward)
    # the engine still serves (ignore_eos: a sampled end of text would stop it early)
    assert len(engine.generate("m", [5, 6], SamplingParams(max_tokens=3, ignore_eos=True),
                               timeout=30).token_ids) == 3


def test_a_step_failing_beside_cached_sequences_fails_them_not_the_engine(
        tiny_dirs, make_engine, monkeypatch):
    """Releasing the failed step's sequences moves a filled slot into a freed one: that
    copy writes the cache's (inference-mode) tensors, so it must run in inference mode
    too, or the engine thread died with it."""
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, start=False)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    handles = [engine.submit(GenerationRequest(p, "m", params)) for p in ([5, 6, 7], [8, 9])]
    runner = engine.registry._bases[str(tiny_dirs["llama"])].runner
    real_forward = runner.forward
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # both prompts are in the cache by now
            raise RuntimeError("boom")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(runner, "forward", second_fails)
    engine.start()
    for handle in handles:
        with pytest.raises(RuntimeError, match="boom"):
            handle.result(timeout=30)
    out = engine.generate("m", [5, 6], SamplingParams(max_tokens=3, ignore_eos=True),
                          timeout=30)
    assert len(out.token_ids) == 3


@pytest.mark.parametrize("fault", ["slot", "prefix copy", "release after a failed step"])
def test_a_fault_outside_a_step_fails_its_requests_and_the_engine_goes_on(
        tiny_dirs, make_engine, monkeypatch, fault):
    """Taking a slot or copying a cached prefix at admission, or giving back a failed
    step's slot, may fail too: the request it touched gets the error, its base is given
    back, and the engine thread lives on to serve the next one (where it died, every
    later request waited forever)."""
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    engine.tokenizer("m")  # load the base
    runner = engine.registry._bases[str(tiny_dirs["llama"])].runner
    patched = {"slot": "allocate", "prefix copy": "load_prefix",
               "release after a failed step": "release"}[fault]
    real = getattr(runner, patched)
    real_forward = runner.forward
    calls = []

    def broken(*args, **kwargs):
        calls.append(patched)
        raise RuntimeError("boom")

    def failing_forward(*args, **kwargs):
        raise RuntimeError("step boom")

    monkeypatch.setattr(runner, patched, broken)
    if patched == "release":
        monkeypatch.setattr(runner, "forward", failing_forward)
    handle = engine.submit(GenerationRequest([5, 6], "m", SamplingParams(max_tokens=3)))
    with pytest.raises(RuntimeError, match="boom"):
        handle.result(timeout=30)
    assert calls
    monkeypatch.setattr(runner, patched, real)
    monkeypatch.setattr(runner, "forward", real_forward)
    out = engine.generate("m", [5, 6], SamplingParams(max_tokens=3, ignore_eos=True),
                          timeout=30)
    assert len(out.token_ids) == 3
    base = engine.registry._bases[str(tiny_dirs["llama"])]
    deadline = time.monotonic() + 10  # a finished request is released after its last event
    while base.pins and time.monotonic() < deadline:
        time.sleep(0.01)
    assert base.pins == 0  # the failed request gave its base back


def test_long_context_grows_rotary_tables_and_cache(tmp_path, make_engine):
    from gptstore.testing.tiny import make_tiny_model

    folder = make_tiny_model("llama", tmp_path / "long", initializer_range=0.2,
                             max_position_embeddings=4096)
    engine = make_engine({"m": causal_spec(folder)}, max_step_tokens=1024)
    prompt = [(13 * i) % 450 + 10 for i in range(2100)]  # beyond the first 2048 positions
    out = engine.generate("m", prompt, SamplingParams(temperature=0, max_tokens=4,
                                                      ignore_eos=True), timeout=60)
    reference, _ = load_causal(folder)
    assert out.token_ids == hf_greedy(reference, prompt, 4)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/pagemap")
def test_an_idle_base_keeps_its_last_slot_warm_and_zeroed(monkeypatch):
    """The last sequence of an idle base leaves its slot's pages backed, zeroed in place:
    the next request's copy of its cached history writes into backed memory (1,100
    positions of bf16 SmolLM2: 8-9 ms into fresh pages, 2 ms into warm ones, on a Zen 4
    EPYC). Only while idle, and only the positions that sequence wrote: the rest goes
    back, and a slot freed while others run goes back whole."""
    cache = SlotKVCache(n_layers=4, n_kv_heads=2, head_dim=64, max_slots=4,
                        max_length=4096, dtype=torch.float32)
    per_position = 2 * 4 * 2 * 64 * 4  # k and v, 4 layers, 2 heads, fp32
    per_page = mmap.PAGESIZE // (64 * 4)  # positions of one head in a page
    a = cache.allocate()
    cache.ensure_capacity(512)
    cache.k[:, 0, :, :512] = float("nan")  # a broken model's keys and values
    cache.v[:, 0, :, :512] = float("nan")
    a.length = 200  # a step that failed after writing 312 positions more
    mapping = cache.k.data_ptr()
    cache.release(a)  # no sequence is live: the base is idle
    assert cache.k.data_ptr() == mapping and cache.capacity == 4096  # reservation kept
    assert cache.k.eq(0).all() and cache.v.eq(0).all()  # no NaN survives, nowhere
    # backed: the positions written, less the page holding the first one after them
    warm = _resident_bytes(cache)
    assert (200 - per_page) * per_position <= warm <= 200 * per_position
    assert cache.nbytes == 200 * per_position
    b = cache.allocate()  # the next request takes the warm slot, its pages still backed
    assert b.index == 0 and cache.nbytes == 0 and _resident_bytes(cache) == warm
    c = cache.allocate()
    cache.k[:, 1, :, :100] = 1.0
    cache.v[:, 1, :, :100] = 1.0
    b.length, c.length = 50, 100
    cache.release(b)  # c moves into slot 0; its old place goes back: c still runs
    assert c.index == 0 and cache.k[:, 0, :, :100].eq(1.0).all()
    assert cache.k[:, 1].eq(0).all() and cache.v[:, 1].eq(0).all()
    assert cache.nbytes == 100 * per_position
    cache.release(c)  # idle again: slot 0 turns warm with c's 100 positions
    assert cache.k.eq(0).all() and cache.v.eq(0).all()
    assert cache.nbytes == 100 * per_position
    assert _resident_bytes(cache) <= 100 * per_position
    # a sequence longer than the warm bound leaves no warm slot behind
    monkeypatch.setattr(kv_cache, "_WARM_BYTES", 1000 * per_position)
    d = cache.allocate()
    cache.k[:, 0, :, :1001] = 2.0
    d.length = 1001
    cache.release(d)
    assert cache.k.eq(0).all() and cache.nbytes == 0 and _resident_bytes(cache) == 0


def test_positions_past_a_slot_length_read_zero_where_slots_share_pages():
    """A context whose slot is not a whole number of pages (100 positions of 2 fp32
    values: 800 bytes a head) shares pages between neighbouring slots: what cannot go
    back is zeroed in place, and a neighbour's values stay."""
    cache = SlotKVCache(n_layers=2, n_kv_heads=2, head_dim=2, max_slots=3, max_length=100,
                        dtype=torch.float32)
    slots = [cache.allocate() for _ in range(3)]
    cache.ensure_capacity(100)
    cache.k[:] = float("nan")  # every position of every slot, as a broken model would
    cache.v[:] = float("nan")
    for slot, length in zip(slots, (30, 40, 20), strict=True):
        cache.k[:, slot.index, :, :length] = float(length)
        cache.v[:, slot.index, :, :length] = float(length)
        slot.length = length
    cache.release(slots[1])  # the last slot (20 positions) moves into the hole
    assert cache.k[:, 0, :, :30].eq(30.0).all()  # the neighbour keeps its values
    assert cache.k[:, 1, :, :20].eq(20.0).all() and cache.k[:, 1, :, 20:].eq(0).all()
    assert cache.v[:, 1, :, 20:].eq(0).all() and cache.k[:, 2].eq(0).all()
    cache.release(slots[0])
    cache.release(slots[2])  # idle
    if cache.capacity:  # the reservation is kept (Linux): every position reads zero
        assert cache.k.eq(0).all() and cache.v.eq(0).all()
