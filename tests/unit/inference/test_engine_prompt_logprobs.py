"""Scoring a prompt (SamplingParams.prompt_logprobs, what `echo` + `logprobs` and
lm-evaluation-harness's loglikelihood requests read): each prompt token's logprob equals
transformers' log-softmax at the position before it, whichever way the prompt is
prefilled (chunked, batched with others, after a cached prefix, under an adapter);
prompts sharing a context reuse its cached keys/values and scores; max_tokens=0 scores
without generating; an explicit max_tokens must fit the context."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import causal_spec, load_causal
from test_engine_lora import make_adapter

from gptstore.errors import ContextLengthExceeded, InvalidRequest
from gptstore.inference import GenerationRequest, SamplingParams

PROMPT = [5 + (i * 29) % 300 for i in range(45)]
OTHER = [40, 41, 42, 43]


def _scoring(k: int, max_tokens: int = 1) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                          prompt_logprobs=k)


def _reference(model, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


def _check(scores, reference: torch.Tensor, prompt: list[int], k: int) -> None:
    assert scores is not None
    assert len(scores.logprobs) == len(scores.top_logprobs) == len(prompt)
    assert scores.logprobs[0] is None and scores.top_logprobs[0] is None
    for i in range(1, len(prompt)):
        row = reference[i - 1]
        assert scores.logprobs[i] == pytest.approx(row[prompt[i]].item(), abs=1e-4)
        top = scores.top_logprobs[i]
        assert [t.token_id for t in top] == row.topk(k).indices.tolist()
        assert [t.logprob for t in top] == pytest.approx(row.topk(k).values.tolist(), abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_prompt_scores_match_transformers_in_chunks_and_batches(tiny_dirs, make_engine, arch):
    engine = make_engine({"m": causal_spec(tiny_dirs[arch])}, max_step_tokens=8,
                         start=False)
    busy = engine.submit(GenerationRequest(OTHER, "m", SamplingParams(
        temperature=0, max_tokens=20, ignore_eos=True)))
    scored = engine.submit(GenerationRequest(PROMPT, "m", _scoring(3, max_tokens=4)))
    engine.start()  # 45 tokens in chunks of at most 8, beside a decoding request
    reference, _ = load_causal(tiny_dirs[arch])
    result = scored.result(timeout=60)
    _check(result.prompt_logprobs, _reference(reference, PROMPT), PROMPT, 3)
    # the generated tokens are unaffected: greedy continues the scored prompt
    full = _reference(reference, PROMPT + result.token_ids[:-1])
    assert result.token_ids == full[len(PROMPT) - 1:].argmax(-1).tolist()
    assert busy.result(timeout=60).prompt_logprobs is None


def test_max_tokens_zero_scores_the_prompt_only(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    result = engine.generate("m", PROMPT, _scoring(0, max_tokens=0), timeout=60)
    assert result.token_ids == [] and result.text == ""
    assert result.finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(PROMPT), 0)
    reference, _ = load_causal(tiny_dirs["llama"])
    expected = _reference(reference, PROMPT)
    assert result.prompt_logprobs is not None
    assert result.prompt_logprobs.top_logprobs[1:] == [[]] * (len(PROMPT) - 1)
    assert result.prompt_logprobs.logprobs[1:] == pytest.approx(
        [expected[i - 1, PROMPT[i]].item() for i in range(1, len(PROMPT))], abs=1e-4)
    # a one-token prompt has nothing to score
    one = engine.generate("m", [7], _scoring(2, max_tokens=0), timeout=60)
    assert one.prompt_logprobs is not None and one.prompt_logprobs.logprobs == [None]


def test_a_cached_prefix_is_scored_all_the_same(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, prefix_block_tokens=16)
    plain = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    engine.generate("m", PROMPT, plain, timeout=60)  # its blocks are cached now
    hits = engine.stats()["prefix_cache_hit_tokens"]
    result = engine.generate("m", PROMPT, _scoring(1), timeout=60)
    # the plain request's blocks keep no scores: every position computed
    assert engine.stats()["prefix_cache_hit_tokens"] == hits
    reference, _ = load_causal(tiny_dirs["llama"])
    expected = _reference(reference, PROMPT)
    _check(result.prompt_logprobs, expected, PROMPT, 1)
    # the scored prompt gave those blocks its scores: the next one reuses them
    again = engine.generate("m", PROMPT, _scoring(1), timeout=60)
    # 2 blocks of its 44 tokens, the last position computed again for the next one's score
    assert engine.stats()["prefix_cache_hit_tokens"] == hits + 31
    _check(again.prompt_logprobs, expected, PROMPT, 1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_choices_of_one_context_reuse_its_keys_values_and_scores(tiny_dirs, make_engine,
                                                                 arch):
    """lm-evaluation-harness's multiple-choice requests: context + each choice, sent
    together. The first computes the context; the others wait for its blocks (not
    computing them beside it) and take their scores from the cache. The context ends on
    a block boundary, so a choice's own score comes from the last cached position,
    computed again."""
    engine = make_engine({"m": causal_spec(tiny_dirs[arch])}, prefix_block_tokens=8,
                         start=False)
    context = PROMPT[:40]
    prompts = [[*context, 61], [*context, 62, 63], [*context, 64]]
    handles = [engine.submit(GenerationRequest(p, "m", _scoring(2, max_tokens=0)))
               for p in prompts]
    other_k = engine.submit(GenerationRequest([*context, 65], "m", _scoring(3, max_tokens=0)))
    engine.start()
    reference, _ = load_causal(tiny_dirs[arch])
    for prompt, handle in zip(prompts, handles, strict=True):
        _check(handle.result(timeout=60).prompt_logprobs, _reference(reference, prompt),
               prompt, 2)
    _check(other_k.result(timeout=60).prompt_logprobs, _reference(reference, [*context, 65]),
           [*context, 65], 3)
    # choices 2 and 3 found the context's 5 blocks (each computes the last position
    # again); the one asking 3 alternatives where the blocks keep 2 computed the
    # context itself, beside the first
    assert engine.stats()["prefix_cache_hit_tokens"] == 2 * (40 - 1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_choices_after_a_context_ending_inside_a_block_reuse_all_of_it(tiny_dirs,
                                                                     make_engine, arch):
    """A context that ends inside a block: the first choice's prompt stores that block
    whole (context end and choice), and each later choice takes its first positions,
    the rest of the context, with their keys, values and scores; the choice's own
    scores match transformers."""
    engine = make_engine({"m": causal_spec(tiny_dirs[arch])}, prefix_block_tokens=8)
    context = PROMPT[:37]
    prompts = [[*context, 61, 62, 63], [*context, 64, 65, 66], [*context, 67]]
    reference, _ = load_causal(tiny_dirs[arch])
    for prompt in prompts:
        result = engine.generate("m", prompt, _scoring(1, max_tokens=0), timeout=60)
        _check(result.prompt_logprobs, _reference(reference, prompt), prompt, 1)
    # choices 2 and 3: the context's 4 whole blocks and 5 of the fifth's positions, the
    # last of them computed again (its logits score the choice's first token)
    assert engine.stats()["prefix_cache_hit_tokens"] == 2 * (37 - 1)


@pytest.mark.parametrize("gemv", ["aten", "native"])
def test_an_fp32_models_scores_stay_fp32_where_small_steps_use_a_bf16_copy(tiny_dirs,
                                                                          make_engine, gemv):
    """Where the machine decodes fp32-served models on a bf16 copy (an AVX2-only EPYC:
    steps of 1-2 rows, or up to `gemv_rows` on the native kernel), a scored prompt's
    step still runs on the fp32 weights: a score must not depend on its step's size (a
    choice recomputed after a cached context is a few tokens)."""
    from gptstore.inference import native

    if gemv == "native" and native.library() is None:
        pytest.skip("the native kernels do not build on this CPU")
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, decode_dtype="bfloat16",
                         gemv=gemv, gemv_rows=16)
    reference, _ = load_causal(tiny_dirs["llama"])
    prompt = PROMPT[:2] if gemv == "aten" else PROMPT[:12]  # rows the copy would serve
    result = engine.generate("m", prompt, _scoring(2), timeout=60)
    _check(result.prompt_logprobs, _reference(reference, prompt), prompt, 2)


def test_a_scored_prompt_replaces_the_copys_keys_values_in_the_blocks_it_scores(
        tiny_dirs, make_engine):
    """A plain request's blocks may hold keys/values of a small step on the bf16 copy;
    a scored prompt that gives them scores gives them its fp32 keys/values too, so a
    later scored prompt reusing them is scored as from the fp32 weights."""
    from gptstore.inference import native

    if native.library() is None:
        pytest.skip("the native kernels do not build on this CPU")
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, decode_dtype="bfloat16",
                         gemv="native", gemv_rows=16, prefix_block_tokens=8)
    prompt = PROMPT[:16]  # one step of 16 rows: on the copy when not scored
    engine.generate("m", prompt, SamplingParams(temperature=0, max_tokens=1), timeout=60)
    engine.generate("m", prompt, _scoring(1, max_tokens=0), timeout=60)
    hits = engine.stats()["prefix_cache_hit_tokens"]
    choice = [*prompt, 61]
    result = engine.generate("m", choice, _scoring(1, max_tokens=0), timeout=60)
    # both blocks reused, their last position computed again
    assert engine.stats()["prefix_cache_hit_tokens"] - hits == 15
    reference, _ = load_causal(tiny_dirs["llama"])
    _check(result.prompt_logprobs, _reference(reference, choice), choice, 1)


def test_an_adapters_prompt_scores_match_peft(tiny_dirs, make_engine, tmp_path):
    from peft import PeftModel

    base_dir = tiny_dirs["llama"]
    adapter = make_adapter(base_dir, tmp_path / "a", "llama", seed=3,
                           targets=["q_proj", "v_proj", "down_proj"])
    engine = make_engine({"base": causal_spec(base_dir, "k"),
                          "a": causal_spec(base_dir, "k", adapter)}, start=False)
    on_base = engine.submit(GenerationRequest(PROMPT, "base", _scoring(2)))
    on_adapter = engine.submit(GenerationRequest(PROMPT, "a", _scoring(2)))
    engine.start()
    model, _ = load_causal(base_dir)
    _check(on_base.result(timeout=60).prompt_logprobs, _reference(model, PROMPT), PROMPT, 2)
    tuned = PeftModel.from_pretrained(load_causal(base_dir)[0], adapter).eval()
    _check(on_adapter.result(timeout=60).prompt_logprobs, _reference(tuned, PROMPT),
           PROMPT, 2)


def test_the_generic_runner_scores_prompts_too(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])}, use_fast_path=False)
    result = engine.generate("m", PROMPT, _scoring(2), timeout=60)
    reference, _ = load_causal(tiny_dirs["gpt2"])
    _check(result.prompt_logprobs, _reference(reference, PROMPT), PROMPT, 2)


def test_an_explicit_max_tokens_must_fit_the_context(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})  # context 256
    strict = SamplingParams(temperature=0, max_tokens=60, max_tokens_strict=True)
    with pytest.raises(ContextLengthExceeded, match=r"260 were asked for \(200 in the prompt, "
                                                    r"60 for the completion\).*at most 56"):
        engine.submit(GenerationRequest([5] * 200, "m", strict))
    # a server-side default is capped at what the context leaves instead
    capped = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    assert len(engine.generate("m", [5] * 200, capped, timeout=60).token_ids) == 56
    with pytest.raises(InvalidRequest, match="prompt_logprobs must be in"):
        SamplingParams(prompt_logprobs=21)


def test_a_prompt_stopped_in_its_prefill_brings_no_partial_scores(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, max_step_tokens=8,
                         start=False)
    handle = engine.submit(GenerationRequest(PROMPT, "m", _scoring(1)))
    scheduler = engine.scheduler
    scheduler._admit()  # one step by hand: the first chunk of 8 of the 45 tokens
    with torch.inference_mode():
        for seqs in list(scheduler._running.values()):
            scheduler._step_base(seqs)
    engine.shutdown()
    result = handle.result(timeout=30)
    assert result.finish_reason == "cancelled" and result.prompt_logprobs is None
