"""Generation through the engine: parity with transformers, batching, limits, streaming."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from inference_helpers import causal_spec, hf_greedy, load_causal

from gptstore.errors import InvalidRequest, Unavailable
from gptstore.inference import GenerationRequest, SamplingParams

PROMPTS = [
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
    [40, 41],
    [100],
    [200, 201, 202, 203, 204, 205, 206],
]


def _greedy(n: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_batch_matches_transformers_generate(tiny_dirs, make_engine, arch):
    """Prompts of different lengths prefilled and decoded in one batch give, row by row,
    the tokens transformers' generate gives for each prompt alone."""
    engine = make_engine({"m": causal_spec(tiny_dirs[arch])}, start=False)
    handles = [engine.submit(GenerationRequest(p, "m", _greedy(12))) for p in PROMPTS]
    engine.start()  # all four are admitted together: one batched prefill, batched decode
    reference, _ = load_causal(tiny_dirs[arch])
    for prompt, handle in zip(PROMPTS, handles, strict=True):
        assert handle.result(timeout=30).token_ids == hf_greedy(reference, prompt, 12)
    assert engine.stats()["steps"] == 12  # one step per token for the whole batch


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_requests_joining_mid_flight_keep_parity(tiny_dirs, make_engine, arch):
    engine = make_engine({"m": causal_spec(tiny_dirs[arch])}, max_step_tokens=4)
    first = engine.submit(GenerationRequest(PROMPTS[0], "m", _greedy(40)))
    events = iter(first)
    for _ in range(5):  # the first request is decoding when the others arrive
        next(events)
    late = [engine.submit(GenerationRequest(p, "m", _greedy(10))) for p in PROMPTS[1:]]
    reference, _ = load_causal(tiny_dirs[arch])
    rest = [e.token_id for e in events if e.token_id is not None]
    assert first.result().token_ids[5:] == rest
    assert first.result().token_ids == hf_greedy(reference, PROMPTS[0], 40)
    for prompt, handle in zip(PROMPTS[1:], late, strict=True):
        assert handle.result(timeout=30).token_ids == hf_greedy(reference, prompt, 10)


def test_long_prompt_is_prefilled_in_chunks(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, max_step_tokens=8)
    prompt = list(range(10, 60))  # 50 tokens: 7 chunks of <= 8 tokens
    out = engine.generate("m", prompt, _greedy(6), timeout=30)
    reference, _ = load_causal(tiny_dirs["llama"])
    assert out.token_ids == hf_greedy(reference, prompt, 6)
    assert engine.stats()["steps"] == 7 + 5


def test_requests_leave_and_slots_compact(tiny_dirs, make_engine):
    """Short requests finish first; the long one keeps decoding correctly after the
    KV-cache slots of the others are freed and its own slot is moved."""
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, start=False)
    lengths = [3, 25, 5, 2]
    handles = [engine.submit(GenerationRequest(p, "m", _greedy(n)))
               for p, n in zip(PROMPTS, lengths, strict=True)]
    engine.start()
    reference, _ = load_causal(tiny_dirs["llama"])
    for prompt, n, handle in zip(PROMPTS, lengths, handles, strict=True):
        result = handle.result(timeout=30)
        assert result.finish_reason == "length"
        assert result.token_ids == hf_greedy(reference, prompt, n)
    assert engine.stats()["running"] == 0


def test_max_tokens_and_usage(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    out = engine.generate("m", PROMPTS[0], _greedy(7), timeout=30)
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(PROMPTS[0]), 7)


def test_eos_stops_and_is_reported(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    free = engine.generate("m", PROMPTS[1], _greedy(8), timeout=30).token_ids
    stop_at = free[3]
    out = engine.generate("m", PROMPTS[1], SamplingParams(
        temperature=0, max_tokens=8, stop_token_ids=[stop_at]), timeout=30)
    assert out.finish_reason == "stop"
    assert out.token_ids == free[:free.index(stop_at) + 1]


def test_stop_strings_cut_the_text_even_across_tokens(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    tokenizer = engine.tokenizer("m")
    free = engine.generate("m", PROMPTS[0], _greedy(20), timeout=30)
    pieces = [tokenizer.decode([t]) for t in free.token_ids]
    # A stop string made of the end of token 5 and the start of token 6.
    k = next(i for i in range(5, 19) if len(pieces[i]) >= 1 and len(pieces[i + 1]) >= 1)
    stop = pieces[k][-1:] + pieces[k + 1][:1]
    expected = free.text[:free.text.index(stop)]
    streamed = []
    for event in engine.submit(GenerationRequest(PROMPTS[0], "m", _greedy(20, stop=[stop]))):
        streamed.append(event)
    assert streamed[-1].finish_reason == "stop"
    assert "".join(e.text for e in streamed) == expected
    assert stop not in "".join(e.text for e in streamed)


def test_cancel_frees_the_slot_at_once(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])}, max_running=1)
    long = engine.submit(GenerationRequest(PROMPTS[0], "m", _greedy(200)))
    waiting = engine.submit(GenerationRequest(PROMPTS[1], "m", _greedy(3)))
    events = iter(long)
    next(events)
    assert engine.stats()["waiting"] == 1  # only one slot: the second request waits
    long.cancel()
    rest = list(events)  # tokens made before the cancel, then the end
    assert rest[-1].finish_reason == "cancelled" and rest[-1].token_id is None
    assert waiting.result(timeout=30).finish_reason == "length"  # it got the slot
    assert len(long.result().token_ids) < 200
    assert engine.stats()["running"] == 0


def test_breaking_out_of_the_stream_cancels(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    handle = engine.submit(GenerationRequest(PROMPTS[0], "m", _greedy(200)))
    for _ in handle:
        break
    assert handle.cancelled
    deadline = time.monotonic() + 10
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["running"] == 0


def test_queue_full_raises_unavailable_with_retry_hint(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])}, start=False, max_queue=2)
    queued = [engine.submit(GenerationRequest(PROMPTS[1], "m", _greedy(2))) for _ in range(2)]
    with pytest.raises(Unavailable, match="retry in"):
        engine.submit(GenerationRequest(PROMPTS[1], "m", _greedy(2)))
    queued[0].cancel()  # a cancelled queued request makes room at once
    assert queued[0].result().finish_reason == "cancelled"
    engine.submit(GenerationRequest(PROMPTS[1], "m", _greedy(2)))


def test_prompt_longer_than_context_is_invalid(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    with pytest.raises(InvalidRequest, match="prompt has 300 tokens, the model's context is 256"):
        engine.submit(GenerationRequest([5] * 300, "m", _greedy(2)))
    with pytest.raises(InvalidRequest, match="vocabulary"):
        engine.submit(GenerationRequest([10**6], "m", _greedy(2)))


def test_generation_stops_at_the_context_end(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    out = engine.generate("m", [7] * 250, _greedy(100), timeout=30)
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


def test_logprobs_match_log_softmax_of_the_model(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    out = engine.generate("m", PROMPTS[0], _greedy(5, logprobs=True, top_logprobs=3),
                          timeout=30)
    reference, _ = load_causal(tiny_dirs["llama"])
    ids = torch.tensor([PROMPTS[0] + out.token_ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(reference(ids).logits[0].float(), dim=-1)
    n = len(PROMPTS[0])
    assert out.logprobs is not None and out.top_logprobs is not None
    for i, token in enumerate(out.token_ids):
        row = logprobs[n - 1 + i]
        assert out.logprobs[i] == pytest.approx(row[token].item(), abs=1e-4)
        top_ids = [t.token_id for t in out.top_logprobs[i]]
        assert top_ids == row.topk(3).indices.tolist()
        assert top_ids[0] == token  # greedy picks the most likely


def test_async_iteration(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})

    async def consume() -> list[int]:
        handles = [engine.submit(GenerationRequest(p, "m", _greedy(6))) for p in PROMPTS[:2]]
        outs = []
        for handle in handles:
            outs.append([e.token_id async for e in handle if e.token_id is not None])
        return outs[0] + outs[1]

    tokens = asyncio.run(consume())
    reference, _ = load_causal(tiny_dirs["llama"])
    assert tokens == hf_greedy(reference, PROMPTS[0], 6) + hf_greedy(reference, PROMPTS[1], 6)


def test_streams_of_one_step_are_woken_together(tiny_dirs, make_engine):
    """Four streams read on one event loop: each engine step wakes the loop once for all
    of them (one `call_soon_threadsafe`, one self-pipe write), not once per stream, and
    every stream still gets all its tokens."""
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    engine.generate("m", PROMPTS[2], _greedy(1))  # loaded: the four start in one step

    async def consume() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        calls = 0
        plain = loop.call_soon_threadsafe

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return plain(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        handles = [engine.submit(GenerationRequest(p, "m", _greedy(8))) for p in PROMPTS]

        async def read(handle):  # type: ignore[no-untyped-def]
            return [e.token_id async for e in handle if e.token_id is not None]

        tokens = await asyncio.gather(*(read(h) for h in handles))
        return list(tokens), calls

    tokens, calls = asyncio.run(consume())
    reference, _ = load_causal(tiny_dirs["llama"])
    assert tokens == [hf_greedy(reference, p, 8) for p in PROMPTS]
    assert calls <= 16  # one per step (8-11); one per stream and token would be 32


def test_generic_fallback_runner_matches_too(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])}, use_fast_path=False)
    assert engine.model_info("m").runner == "GenericRunner"
    handles = [engine.submit(GenerationRequest(p, "m", _greedy(6))) for p in PROMPTS[:3]]
    reference, _ = load_causal(tiny_dirs["gpt2"])
    for prompt, handle in zip(PROMPTS, handles, strict=False):
        assert handle.result(timeout=30).token_ids == hf_greedy(reference, prompt, 6)


def test_submit_after_shutdown_is_unavailable(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    engine.shutdown()
    with pytest.raises(Unavailable, match="shutting down"):
        engine.submit(GenerationRequest(PROMPTS[1], "m", _greedy(2)))


def test_models_load_on_the_engine_thread(tiny_dirs, make_engine):
    """Loading (heavy torch work) from a request thread would give PyTorch's OpenMP
    runtime a second thread team and slow every later step (engine.py `_acquire`)."""
    import threading

    loaded_on: list[str] = []
    spec = causal_spec(tiny_dirs["llama"])
    load = spec.base_loader

    def recording_loader():  # type: ignore[no-untyped-def]
        loaded_on.append(threading.current_thread().name)
        return load()

    spec.base_loader = recording_loader
    engine = make_engine({"m": spec})
    engine.tokenizer("m")
    assert engine.generate("m", PROMPTS[1], _greedy(3)).token_ids
    assert loaded_on == ["gptstore-engine"]  # once, and not on this (the caller's) thread
