"""Prefix caching and paced chunked prefill: the same greedy tokens as without them (and
as transformers), reuse across requests and chat turns, adapters kept apart, and the
cache within its memory bound under many distinct prompts."""

from __future__ import annotations

import random

import pytest
import torch
from inference_helpers import causal_spec, hf_greedy, load_causal
from test_engine_lora import make_adapter, peft_greedy

from gptstore.inference import GenerationRequest, SamplingParams, kv_cache, native
from gptstore.inference.pacing import PrefillPacer
from gptstore.inference.prefix_cache import BlockScores, PrefixCache

BLOCK = 16
PACED = True
SHARED = [7 + (i * 37) % 400 for i in range(70)]  # a 70-token "system prompt"
SUFFIXES = [[450, 451, 452], [300, 9], [123, 124, 125, 126, 127]]


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def run_one_by_one(engine, prompts: list[list[int]], n: int, name: str = "m") -> list[list[int]]:
    return [engine.generate(name, p, _greedy(n), timeout=60).token_ids for p in prompts]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_shared_prefix_is_reused_and_gives_the_same_greedy_tokens(tiny_dirs, make_engine,
                                                                   arch):
    spec = causal_spec(tiny_dirs[arch])
    cached = make_engine({"m": spec}, prefix_block_tokens=BLOCK)
    plain = make_engine({"m": causal_spec(tiny_dirs[arch])}, prefix_cache_bytes=0)
    prompts = [SHARED + s for s in SUFFIXES] + [SHARED]  # the last: all but one cached
    with_cache = run_one_by_one(cached, prompts, 10)
    without = run_one_by_one(plain, prompts, 10)
    assert with_cache == without
    reference, _ = load_causal(tiny_dirs[arch])
    assert with_cache == [hf_greedy(reference, p, 10) for p in prompts]
    stats = cached.stats()
    # requests 2 and 3 each found SHARED's 4 full blocks and the first 6 positions of
    # the fifth (SHARED's last 6 tokens, in the block the first request stored from
    # position 64): 70; the last, SHARED alone, 69 (one token is kept for its logits)
    assert stats["prefix_cache_hit_tokens"] == 70 + 70 + 69
    assert plain.stats()["prefix_cache_hit_tokens"] == 0
    # each request's usage says how many of its prompt tokens came from the cache
    # (what the API reports as `usage.prompt_tokens_details.cached_tokens`)
    fresh = make_engine({"m": causal_spec(tiny_dirs[arch])}, prefix_block_tokens=BLOCK)
    usages = [fresh.generate("m", p, _greedy(10), timeout=60).usage for p in prompts]
    assert [u.cached_tokens for u in usages] == [0, 70, 70, 69]
    assert [u.prompt_tokens for u in usages] == [len(p) for p in prompts]
    assert [plain.generate("m", p, _greedy(3), timeout=60).usage.cached_tokens
            for p in prompts] == [0, 0, 0, 0]


def test_requests_arriving_together_compute_a_new_shared_prefix_once(tiny_dirs,
                                                                     make_engine):
    # a new system prompt, four requests at once: the first computes its blocks, the
    # others wait for them in the queue and start after them
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=BLOCK,
                         start=False)
    prompts = [SHARED + s for s in SUFFIXES] + [[*SHARED, 77]]
    handles = [engine.submit(GenerationRequest(p, "m", _greedy(6))) for p in prompts]
    unrelated = engine.submit(GenerationRequest(list(range(200, 240)), "m", _greedy(6)))
    engine.start()
    reference, _ = load_causal(tiny_dirs["llama"])
    for prompt, handle in zip(prompts, handles, strict=True):
        assert handle.result(timeout=60).token_ids == hf_greedy(reference, prompt, 6)
    assert unrelated.result(timeout=60).token_ids == hf_greedy(reference, list(range(200, 240)), 6)
    assert engine.stats()["prefix_cache_hit_tokens"] == 3 * 64


def test_a_request_waits_only_for_a_prompt_ending_its_prefill_and_keeps_its_place(
        tiny_dirs, make_engine, monkeypatch):
    """Stepped by hand: a request sharing the prefix of a long prompt still read in
    paced chunks is not held (it would wait many steps); one sharing a short prompt's
    is held for one step, and the capacity it will take is not given to a request
    queued behind it."""
    monkeypatch.setattr(PrefillPacer, "budget", lambda self, decoding: 8 if decoding else 512)
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=8,
                         max_running=5, start=False)
    scheduler = engine.scheduler

    def submit(prompt: list[int]):
        return engine.submit(GenerationRequest(prompt, "m", _greedy(40)))

    def step() -> None:  # as the engine's loop: admit, then step
        scheduler._admit()
        run()

    def run() -> None:
        with torch.inference_mode():
            for seqs in list(scheduler._running.values()):
                scheduler._step_base(seqs)

    def running() -> list[list[int]]:
        return [s.prompt for seqs in scheduler._running.values() for s in seqs]

    def waiting() -> list[list[int]]:
        return [s.prompt for s in scheduler._waiting]

    decoding = submit([5, 6, 7, 8])
    step()  # decoding from now on: prompts are paced at 8 tokens a step
    long_prompt = [3 + (i * 11) % 500 for i in range(100)]
    submit(long_prompt)
    for _ in range(6):  # 48 of its 100 tokens read, in chunks of 8
        step()
    sharing_long = [*long_prompt[:64], 9]
    submit(sharing_long)
    scheduler._admit()
    assert sharing_long in running()  # not held: the long prompt needs 7 more steps

    short = [3 + (i * 13) % 500 for i in range(30)]
    sharing_short, unrelated = [*short[:24], 1, 2], [400, 401, 402]
    for prompt in (short, sharing_short, unrelated):
        submit(prompt)
    scheduler._admit()
    assert short in running() and waiting() == [sharing_short, unrelated]
    hits = engine.stats()["prefix_cache_hit_tokens"]
    run()  # the short prompt whole: its blocks are cached after this step
    scheduler._admit()
    assert sharing_short in running() and waiting() == [unrelated]
    assert engine.stats()["prefix_cache_hit_tokens"] - hits == 24
    engine.shutdown()
    assert decoding.result(timeout=30).finish_reason == "cancelled"


def test_a_short_shared_system_header_is_reused_with_the_default_blocks(tiny_dirs,
                                                                         make_engine):
    # SmolLM2's chat template puts the same 24-token system header in front of every chat
    # without a system message; the default blocks must be small enough to reuse it
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    header = SHARED[:24]
    reference, _ = load_causal(tiny_dirs["llama"])
    for suffix in SUFFIXES:
        prompt = header + suffix
        assert engine.generate("m", prompt, _greedy(6), timeout=60).token_ids == \
            hf_greedy(reference, prompt, 6)
    assert engine.stats()["prefix_cache_hit_tokens"] == 2 * len(header)


def test_chat_history_is_reused_turn_after_turn(tiny_dirs, make_engine):
    """A turn's prompt and its answer are cached when it ends: the next turn, which
    sends both back as history, computes only what follows them."""
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=BLOCK)
    reference, _ = load_causal(tiny_dirs["llama"])
    history = list(SHARED)
    for turn in SUFFIXES:
        history += turn
        answer = engine.generate("m", history, _greedy(20), timeout=60).token_ids
        assert answer == hf_greedy(reference, history, 20)
        history += answer
    # turn 1: 73 prompt tokens + 19 of its answer in the cache (its last token was
    # never fed back) = 5 blocks, all found by turn 2 (95 tokens); turn 2 leaves
    # 95 + 19 = 7 blocks, all found by turn 3 (the prompts alone: 64 + 80)
    assert engine.stats()["prefix_cache_hit_tokens"] == 80 + 112
    # idle now: the KV cache holds the last turn's positions, in the slot it keeps warm
    # (where it keeps its reservation while idle: Linux, not under strict overcommit)
    engine.scheduler.run_job(lambda: None).result(timeout=30)  # its release has run
    kv = engine.registry._bases[str(tiny_dirs["llama"])].runner.kv
    per_position = 2 * kv.n_layers * kv.n_kv_heads * kv.head_dim * kv.k.element_size()
    warm = kv_cache._GIVE_BACK and not kv_cache._reservations_cost_memory()
    assert engine.stats()["kv_cache_bytes"] == (per_position * (len(history) - 1) if warm
                                                else 0)


def test_a_request_cancelled_in_its_step_leaves_no_answer(tiny_dirs, make_engine,
                                                          monkeypatch):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=BLOCK)
    engine.tokenizer("m")  # load the base
    runner = engine.registry._bases[str(tiny_dirs["llama"])].runner
    real_forward = runner.forward
    handles = []

    def cancel_in_step_20(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        if engine.scheduler.steps == 19:  # the step's tokens are in the cache now
            handles[0].cancel()
        return out

    monkeypatch.setattr(runner, "forward", cancel_in_step_20)
    handles.append(engine.submit(GenerationRequest(SHARED, "m", _greedy(30))))
    events = list(handles[0])
    assert events[-1].finish_reason == "cancelled"
    # the prompt's 4 blocks only: 70 + 19 positions would have made a 5th
    engine.scheduler.run_job(lambda: None).result(timeout=30)  # that step has ended
    assert engine.stats()["prefix_cache_blocks"] == 4


def test_adapters_do_not_share_cached_prefixes(tiny_dirs, make_engine, tmp_path):
    base_dir = tiny_dirs["llama"]
    adapter = make_adapter(base_dir, tmp_path / "a", "llama", seed=3)
    engine = make_engine({"base": causal_spec(base_dir, "k"),
                          "a": causal_spec(base_dir, "k", adapter)},
                         prefix_block_tokens=BLOCK)
    prompt = SHARED + SUFFIXES[0]
    base_out = engine.generate("base", prompt, _greedy(8), timeout=60).token_ids
    adapter_out = engine.generate("a", prompt, _greedy(8), timeout=60).token_ids
    assert engine.stats()["prefix_cache_hit_tokens"] == 0  # other namespace: no hit
    assert adapter_out == peft_greedy(base_dir, adapter, prompt, 8)
    again = engine.generate("a", SHARED + SUFFIXES[1], _greedy(8), timeout=60).token_ids
    assert engine.stats()["prefix_cache_hit_tokens"] == 70  # 4 blocks and 6 of a fifth
    assert again == peft_greedy(base_dir, adapter, SHARED + SUFFIXES[1], 8)
    assert base_out != adapter_out


def test_cache_stays_within_its_bound_under_many_distinct_prompts(tiny_dirs, make_engine):
    # llama tiny: 2 layers x 2 kv heads x 8 head dim, fp32: 2 * 2*2*16*8 * 4 B = 4 KiB/block
    budget = 40 * 1024
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=BLOCK,
                         prefix_cache_bytes=budget)
    rng = random.Random(0)
    for _ in range(30):
        prompt = [rng.randrange(3, 500) for _ in range(rng.randrange(20, 90))]
        engine.generate("m", prompt, _greedy(2), timeout=60)
        stats = engine.stats()
        assert stats["prefix_cache_bytes"] <= budget
    assert stats["prefix_cache_evicted_blocks"] > 0
    assert stats["prefix_cache_blocks"] > 0
    # the most recent prompt's blocks survived the evictions: asked again, they are hit
    hits = stats["prefix_cache_hit_tokens"]
    engine.generate("m", [*prompt, 5], _greedy(2), timeout=60)
    assert engine.stats()["prefix_cache_hit_tokens"] - hits == len(prompt) // BLOCK * BLOCK


def test_eviction_takes_leaves_before_the_blocks_they_hang_from():
    cache = PrefixCache(budget_bytes=3 * 2 * 4 * 4, block_tokens=2)  # room for 3 blocks

    def read(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 1, end - start, 2), torch.zeros(1, 1, end - start, 2)

    assert cache.insert("", [1, 2, 3, 4, 5, 6], read) == 3  # root -> b1 -> b2 -> b3
    assert cache.insert("", [1, 2, 9, 9], read) == 1  # shares b1; one block over budget
    assert cache.nbytes <= cache.budget_bytes
    # the deepest block of the older chain went; the shared root block stayed
    assert len(cache.lookup("", [1, 2, 3, 4, 5, 6, 0], 6)) == 2
    assert len(cache.lookup("", [1, 2, 9, 9, 0], 4)) == 2
    assert cache.lookup("x", [1, 2, 3], 2) == []  # another namespace sees nothing


def test_a_lookup_takes_the_first_positions_of_a_block_that_shares_only_those():
    """Where the whole blocks end, a cached block that starts with the prompt's next
    tokens and then differs (or reaches past `limit`) serves those first positions:
    their keys, values and scores, as views of the block's. Not a block of another
    first token, one without the scores asked for, nor one evicted since."""
    cache = PrefixCache(budget_bytes=10**6, block_tokens=4)

    def read(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(start, end, dtype=torch.float32).view(1, 1, -1, 1)
        return positions.expand(2, 1, -1, 3).clone(), -positions.expand(2, 1, -1, 3).clone()

    def scores(start: int, end: int) -> BlockScores:
        n = end - start
        return BlockScores(torch.arange(start, end, dtype=torch.float32),
                           torch.zeros(n, 1, dtype=torch.int32), torch.zeros(n, 1))

    assert cache.insert("", [1, 2, 3, 4, 5, 6, 7, 8], read) == 2
    blocks = cache.lookup("", [1, 2, 3, 4, 5, 6, 9, 9, 0], 8)
    assert [b.n_tokens for b in blocks] == [4, 2]
    assert blocks[1].k[0, 0, :, 0].tolist() == [4.0, 5.0]  # positions 4 and 5
    assert blocks[1].v[1, 0, :, 2].tolist() == [-4.0, -5.0]
    assert cache.hit_tokens == 6
    # the whole second block matches but only 6 positions may be served
    assert [b.n_tokens for b in cache.lookup("", [1, 2, 3, 4, 5, 6, 7, 8], 6)] == [4, 2]
    assert [b.n_tokens for b in cache.lookup("", [1, 2, 3, 4, 9, 6, 7, 8, 0], 8)] == [4]
    assert [b.n_tokens for b in cache.lookup("", [1, 2, 7, 0], 3)] == [2]  # from the root
    assert cache.lookup("", [1, 2, 3, 4, 5, 0], 5, scores=1) == []  # keeps none
    assert cache.insert("", [1, 2, 3, 4, 5, 6, 7, 8], read, scores) == 0  # scores added
    scored = cache.lookup("", [1, 2, 3, 4, 5, 6, 0], 6, scores=1)
    assert [b.n_tokens for b in scored] == [4, 2]
    assert scored[1].scores is not None and scored[1].scores.logprobs.tolist() == [4.0, 5.0]
    # evicted blocks are found neither whole nor in part
    cache._make_room(cache.budget_bytes, keep=[])
    assert len(cache) == 0 and cache.lookup("", [1, 2, 3, 4, 5, 0], 5) == []
    assert cache._children == {}


def test_scores_count_in_the_bound_and_are_added_to_cached_blocks_where_room_allows():
    kv = 2 * 4 * 4  # one block's keys and values: 2 tokens x 2 floats each, fp32
    scored = 2 * 4 + 2 * 2 * 4 * 2  # its scores with 2 alternatives: 40 bytes
    cache = PrefixCache(budget_bytes=2 * kv + scored, block_tokens=2)

    def read(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 1, end - start, 2), torch.zeros(1, 1, end - start, 2)

    def scores(start: int, end: int) -> BlockScores:
        return BlockScores(torch.zeros(end - start), torch.zeros(end - start, 2, dtype=torch.int32),
                           torch.zeros(end - start, 2))

    assert cache.insert("", [1, 2, 3, 4], read) == 2
    assert cache.cached_blocks("", [1, 2, 3, 4], scores=2) == 0  # keys/values only
    assert cache.insert("", [1, 2, 3, 4], read, scores) == 0
    # room for one block's scores: the first got them, the second stays without
    assert cache.nbytes == 2 * kv + scored <= cache.budget_bytes
    assert cache.cached_blocks("", [1, 2, 3, 4], scores=2) == 1
    assert cache.cached_blocks("", [1, 2, 3, 4], scores=1) == 1
    assert cache.cached_blocks("", [1, 2, 3, 4], scores=3) == 0
    assert cache.cached_blocks("", [1, 2, 3, 4]) == 2
    assert len(cache.lookup("", [1, 2, 3, 4, 5], 4, scores=2)) == 1


def test_pacer_bounds_prefill_chunks_while_others_decode():
    pacer = PrefillPacer(max_tokens=512, ratio=1.0)
    assert pacer.budget(decoding=0) == 512  # alone: the biggest chunk
    assert pacer.budget(decoding=3) == 0  # 3 rows' step not measured: one without prompt
    pacer.observe(0.02, prefill_tokens=0, decode_rows=3)
    assert pacer.budget(decoding=3) == 64  # no prompt token measured yet: a cautious start
    pacer.observe(0.5, prefill_tokens=500, decode_rows=0)  # ~1 ms per prompt token
    for _ in range(5):
        pacer.observe(0.04, prefill_tokens=0, decode_rows=15)  # 40 ms decode steps
    # ~1 ms a token once the 3-row step, the fewest rows measured, is the fixed part
    assert pacer.token_s == pytest.approx((0.5 - 0.02) / 500)
    assert pacer.budget(decoding=15) == int(0.04 / pacer.token_s) == 41
    assert pacer.budget(decoding=0) == 512
    slow = PrefillPacer(max_tokens=512, decode_steps={1: 0.001}, token_s=0.01)
    assert slow.budget(decoding=1) == slow.min_tokens > 0  # the prompt still progresses
    # a short prompt is taken whole whatever the budget, within the step's token cap
    assert slow.takes_whole(slow.whole_tokens, step_tokens=0)
    assert not slow.takes_whole(slow.whole_tokens + 1, step_tokens=0)
    assert not slow.takes_whole(40, step_tokens=500)  # 540 > max_tokens


def test_pacer_paces_by_the_decode_step_of_as_many_rows():
    """A decode step's cost depends on its rows: measured on a warm-up's 1-row steps, one
    average would make each prompt token beside 15 streams seem to cost several times
    what it does, and read a long prompt `min_tokens` a step. Each count of decoding rows
    gets one decode-only step first, again after `refresh_steps` steps with prompt
    tokens; a probe that took prompt tokens anyway is not repeated (the nearest count
    stands in), so a prompt is never held back more than a step for it."""
    pacer = PrefillPacer(max_tokens=512, ratio=1.0)
    for _ in range(3):
        pacer.observe(0.015, prefill_tokens=0, decode_rows=1)  # a warm-up's steps
    assert pacer.budget(decoding=15) == 0  # 15 rows: their decode step is measured first
    pacer.observe(0.07, prefill_tokens=0, decode_rows=15)
    pacer.observe(0.086, prefill_tokens=8, decode_rows=15)  # 2 ms a prompt token
    assert pacer.token_s == pytest.approx(0.002)
    assert pacer.budget(decoding=15) == pytest.approx(35, abs=1)  # 70 ms / 2 ms
    for _ in range(pacer.refresh_steps - 2):  # 64 steps with prompt tokens in all
        pacer.observe(0.086, prefill_tokens=8, decode_rows=15)
        assert pacer.budget(decoding=15) > 0
    pacer.observe(0.086, prefill_tokens=8, decode_rows=15)
    assert pacer.budget(decoding=15) == 0  # the streams moved on: measured again
    pacer.observe(0.08, prefill_tokens=0, decode_rows=15)
    assert pacer.decode_steps[15] == pytest.approx(0.073)  # averaged in
    assert pacer.budget(decoding=15) > 0
    assert pacer.budget(decoding=14) == 0
    pacer.observe(0.2, prefill_tokens=40, decode_rows=14)  # a short prompt taken whole
    assert pacer.budget(decoding=14) == int(pacer.decode_steps[15] / pacer.token_s)
    assert pacer.decode_step(2) == pacer.decode_steps[1]  # the nearest count measured
    assert PrefillPacer(max_tokens=512).decode_step(3) is None


def test_pacer_keeps_a_chunk_on_the_kernel_of_the_decoding_rows():
    """Where the runner's steps leave the native kernel past `fast_rows` rows, a chunk
    beside decoding rows stays within that while it leaves at least `min_tokens`; past
    that it is paced as before (the prompt still progresses), and alone it takes the
    biggest chunk."""
    steps = {15: 0.04, 30: 0.04, 61: 0.04}
    pacer = PrefillPacer(max_tokens=512, ratio=1.0, decode_steps=steps, token_s=0.001,
                         fast_rows=64)
    assert pacer.budget(decoding=15) == 40  # the pace wants fewer than the room left
    assert pacer.budget(decoding=30) == 34  # the room left is less than the pace
    assert pacer.budget(decoding=61) == 40  # too little room: paced across it
    assert pacer.budget(decoding=0) == 512
    assert PrefillPacer(max_tokens=512, fast_rows=64, decode_steps=steps,
                        ).budget(decoding=15) == 49  # no prompt token measured
    assert PrefillPacer(max_tokens=512, ratio=1.0, decode_steps=steps, token_s=0.001,
                        ).budget(decoding=30) == 40  # no such boundary


def test_a_runner_names_the_rows_its_native_steps_stop_at(tiny_dirs):
    """`fast_step_rows`: the native GEMV's `gemv_rows` where steps beyond it move to the
    batched products; None where it serves 1-2 rows only, every step, or not at all."""
    from transformers import AutoModelForCausalLM

    from gptstore.inference.models import build_runner
    from gptstore.inference.types import GEMV_ROWS_ALL

    if native.library() is None:
        pytest.skip("the native kernels do not build here")
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"],
                                                 dtype=torch.bfloat16).eval()
    for gemv, rows, expected in (("native", 16, 16), ("native", 2, None),
                                 ("native", GEMV_ROWS_ALL, None), ("aten", 16, None)):
        runner = build_runner(model, max_slots=2, gemv=gemv, gemv_rows=rows)
        assert runner.fast_step_rows == expected, (gemv, rows)


def test_short_prompts_arriving_while_streams_decode_are_prefilled_whole(
        tiny_dirs, make_engine, monkeypatch):
    """A burst of chat-sized prompts is not metered out a few tokens a step (each would
    wait many steps for its first token); a long prompt still is, to its last chunk.
    The pacer's budget is pinned at 8 tokens a step, as if streams were decoding (the
    tiny model's streams would end before the prompts arrive)."""
    monkeypatch.setattr(PrefillPacer, "budget", lambda self, decoding: 8)
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, max_step_tokens=512,
                         paced_prefill=PACED)

    def steps_to_first_token(prompt: list[int]) -> tuple[int, list[int]]:
        # one token: no step runs after it, whenever this thread reads the count
        before = engine.stats()["steps"]
        tokens = engine.generate("m", prompt, _greedy(1), timeout=60).token_ids
        return engine.stats()["steps"] - before, tokens

    reference, _ = load_causal(tiny_dirs["llama"])
    short = [3 + (i * 7) % 300 for i in range(40)]
    took, tokens = steps_to_first_token(short)
    assert took == 1  # whole, not 5 chunks of 8
    assert tokens == hf_greedy(reference, short, 1)
    long_prompt = [3 + (i * 11) % 500 for i in range(100)]
    took, tokens = steps_to_first_token(long_prompt)
    assert took >= 100 // 8  # chunks of 8 to the end: its last 60 were not taken whole
    assert tokens == hf_greedy(reference, long_prompt, 1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_long_prompt_arriving_while_streams_decode_keeps_parity(tiny_dirs, make_engine,
                                                               arch):
    """Streams keep decoding while a long prompt is prefilled in paced chunks, and every
    request gets the tokens transformers gives it alone."""
    engine = make_engine({"m": causal_spec(tiny_dirs[arch])}, max_step_tokens=512,
                         paced_prefill=PACED)
    streams = [engine.submit(GenerationRequest([5 + i, 6, 7, 8], "m", _greedy(60)))
               for i in range(3)]
    events = [iter(h) for h in streams]
    for it in events:
        next(it)  # all three are decoding
    long_prompt = [3 + (i * 11) % 500 for i in range(200)]
    late = engine.submit(GenerationRequest(long_prompt, "m", _greedy(5)))
    steps_before = engine.stats()["steps"]
    late_events = iter(late)
    late_tokens = [next(late_events).token_id]
    # prefilled in chunks of at most 64 tokens (nothing measured yet), each step with
    # the streams' decode rows: 4 steps at least, where unpaced it would take 1
    assert engine.stats()["steps"] - steps_before >= 3
    late_tokens += [e.token_id for e in late_events if e.token_id is not None]
    reference, _ = load_causal(tiny_dirs[arch])
    assert late_tokens == hf_greedy(reference, long_prompt, 5)
    for i, handle in enumerate(streams):
        assert handle.result(timeout=60).token_ids == hf_greedy(reference, [5 + i, 6, 7, 8], 60)


def test_a_request_that_ends_on_its_first_token_still_leaves_its_prefix(tiny_dirs,
                                                                       make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=BLOCK)
    # finishes in its prefill step; its blocks are stored right after its token is out,
    # on the engine thread, so before the next request is admitted there
    engine.generate("m", SHARED, _greedy(1), timeout=60)
    reference, _ = load_causal(tiny_dirs["llama"])
    out = engine.generate("m", SHARED + SUFFIXES[2], _greedy(6), timeout=60).token_ids
    assert engine.stats()["prefix_cache_hit_tokens"] == len(SHARED) // BLOCK * BLOCK
    assert out == hf_greedy(reference, SHARED + SUFFIXES[2], 6)
