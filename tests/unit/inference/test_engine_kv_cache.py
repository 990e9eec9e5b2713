"""The slot KV cache: dense slots, compaction on release, growth, failure isolation."""

from __future__ import annotations

import torch
from inference_helpers import causal_spec, hf_greedy, load_causal

from gptstore.inference import GenerationRequest, SamplingParams
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
    assert cache.free_slots == 1
    cache.release(a)  # twice is harmless
    assert cache.free_slots == 1


def test_growth_keeps_contents_and_idle_cache_is_freed():
    cache = _cache()
    slot = cache.allocate()
    cache.ensure_capacity(10)
    cache.v[:, 0, :, :10] = 7.0
    cache.ensure_capacity(300)
    assert cache.capacity >= 300
    assert cache.v[:, 0, :, :10].eq(7.0).all()
    cache.release(slot)
    assert cache.nbytes == 0


def test_the_cache_holds_the_live_slots_not_all_of_them():
    """A lone sequence on an idle base allocates one slot's positions, not max_slots'
    (a 1,000-token prompt otherwise zero-filled 16 slots x 2,048 positions before its
    first token); more live sequences grow the slots, keeping what the others hold."""
    cache = _cache(slots=16)
    first = cache.allocate()
    cache.ensure_capacity(200)
    assert cache.k.shape[1] == 1 and cache.capacity == 256
    cache.k[:, 0, :, :200] = 5.0
    first.length = 200
    others = [cache.allocate() for _ in range(4)]
    cache.ensure_capacity(10)
    assert cache.k.shape[1] == 8 and cache.capacity == 256  # doubled to hold 5
    assert cache.k[:, 0, :, :200].eq(5.0).all()
    assert cache.k[:, 1:].eq(0).all()  # new room is zeros (read, masked, by decode steps)
    for slot in [first, *others]:
        cache.release(slot)
    assert cache.nbytes == 0 and cache.k.shape == (0,)


def test_parity_across_cache_growth(tiny_dirs, make_engine):
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
