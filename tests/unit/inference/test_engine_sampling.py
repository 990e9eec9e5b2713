"""Sampling: seeds, temperature / top-k / top-p, penalties (unit and through the engine)."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import causal_spec

from gptstore.errors import InvalidRequest
from gptstore.inference import GenerationRequest, SamplingParams
from gptstore.inference.sampling import SamplerState, sample

PROMPT = [5, 6, 7, 8, 9, 10]


def _state(vocab: int = 8, prompt: list[int] | None = None, **kw: object) -> SamplerState:
    return SamplerState(SamplingParams(**kw), prompt or [], vocab)  # type: ignore[arg-type]


def test_same_seed_same_tokens_whatever_shares_the_batch(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])})
    params = SamplingParams(temperature=1.0, seed=123, max_tokens=12, ignore_eos=True)
    alone = engine.generate("m", PROMPT, params, timeout=30).token_ids
    crowd = [engine.submit(GenerationRequest(PROMPT, "m", SamplingParams(
        temperature=1.0, seed=s, max_tokens=12, ignore_eos=True))) for s in (123, 7, 8, 9)]
    outs = [h.result(timeout=30).token_ids for h in crowd]
    assert outs[0] == alone
    assert len({tuple(o) for o in outs}) > 1  # other seeds sample other tokens


def test_top_k_one_is_greedy_and_tiny_top_p_is_greedy(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    greedy = engine.generate("m", PROMPT, SamplingParams(temperature=0, max_tokens=8,
                                                         ignore_eos=True)).token_ids
    for params in (SamplingParams(temperature=1.5, top_k=1, max_tokens=8, ignore_eos=True),
                   SamplingParams(temperature=1.5, top_p=1e-6, seed=3, max_tokens=8,
                                  ignore_eos=True)):
        assert engine.generate("m", PROMPT, params, timeout=30).token_ids == greedy


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
    for seed in range(30):
        state = _state(temperature=5.0, top_k=2, seed=seed)
        assert sample(logits.clone(), [state]).token_ids[0] in (0, 1)
    probs = torch.softmax(logits[0], -1)  # 0.64, 0.23, 0.09, ...: top_p=0.8 keeps 0, 1
    assert probs[0] < 0.8 < probs[0] + probs[1]
    for seed in range(30):
        state = _state(temperature=1.0, top_p=0.8, seed=seed)
        assert sample(logits.clone(), [state]).token_ids[0] in (0, 1)


def test_temperature_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    state = _state(vocab=3, temperature=1.0, seed=0)
    counts = torch.zeros(3)
    for _ in range(2000):
        counts[sample(logits.clone(), [state]).token_ids[0]] += 1
    assert torch.allclose(counts / 2000, torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


def test_repetition_penalty_follows_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    state = _state(vocab=5, prompt=[0, 1], temperature=0, repetition_penalty=1.7)
    state.observe(4)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([[0, 1, 4]]), logits.clone())
    work = logits.clone()
    sample(work, [state])
    assert torch.allclose(work, expected)


def test_frequency_and_presence_penalties_follow_openai():
    logits = torch.zeros(1, 4)
    state = _state(vocab=4, prompt=[3, 3], temperature=0, frequency_penalty=0.5,
                   presence_penalty=0.25)
    for token in (1, 1, 2):
        state.observe(token)
    work = logits.clone()
    sample(work, [state])
    # token 1: 2 * 0.5 + 0.25; token 2: 0.5 + 0.25; prompt token 3 is not penalised
    assert work[0].tolist() == [0.0, -1.25, -0.75, 0.0]


def test_logit_bias_follows_openai():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    state = _state(vocab=4, temperature=0, logprobs=True, logit_bias={1: -100.0, 3: 1.5})
    result = sample(logits.clone(), [state])
    assert result.token_ids == [2]  # token 1 banned; 3 lifted to 1.5, still below 2
    # the reported logprob is the model's own, before the bias (as OpenAI's)
    assert result.logprobs[0] == pytest.approx(torch.log_softmax(logits[0], -1)[2].item())
    forced = sample(logits.clone(), [_state(vocab=4, temperature=1.0, seed=3,
                                            logit_bias={0: 100.0})])
    assert forced.token_ids == [0]


def test_logit_bias_bans_a_token_through_the_engine(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})
    params = dict(temperature=0, max_tokens=12, ignore_eos=True)
    plain = engine.generate("m", PROMPT, SamplingParams(**params), timeout=30).token_ids
    banned = plain[0]
    biased = engine.generate("m", PROMPT, SamplingParams(**params, logit_bias={banned: -100}),
                             timeout=30).token_ids
    assert banned not in biased and biased != plain
    with pytest.raises(InvalidRequest, match="outside the model's vocabulary") as info:
        engine.generate("m", PROMPT, SamplingParams(**params, logit_bias={10**6: 1.0}))
    assert info.value.param == "logit_bias"


def test_penalties_change_greedy_output(tiny_dirs, make_engine):
    engine = make_engine({"m": causal_spec(tiny_dirs["gpt2"])})

    def run(**kw: float) -> list[int]:
        params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, **kw)
        return engine.generate("m", PROMPT, params, timeout=30).token_ids

    plain = run()
    assert len(set(plain)) < len(plain)  # the tiny model repeats itself
    for penalised in (run(frequency_penalty=2.0), run(presence_penalty=2.0),
                      run(repetition_penalty=50.0)):
        assert penalised != plain
        assert len(set(penalised)) > len(set(plain))


def test_logprobs_are_reported_only_when_asked():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    states = [_state(vocab=3, temperature=0, logprobs=True, top_logprobs=2),
              _state(vocab=3, temperature=0)]
    result = sample(logits.clone(), states)
    assert result.token_ids == [2, 2]
    lp = torch.log_softmax(logits[0], -1)
    assert result.logprobs[0] == pytest.approx(lp[2].item())
    assert [t for t, _ in result.top_logprobs[0]] == [2, 1]
    assert result.logprobs[1] is None and result.top_logprobs[1] is None


def test_greedy_and_logprob_rows_are_read_whether_all_or_some_rows_ask():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 40, generator=generator)
    best = logits.argmax(-1).tolist()
    lp = torch.log_softmax(logits, -1)
    everyone = sample(logits.clone(), [_state(vocab=40, temperature=0, logprobs=True)
                                       for _ in range(5)])
    assert everyone.token_ids == best
    assert everyone.logprobs == pytest.approx([lp[i, best[i]].item() for i in range(5)])
    # rows 1 and 3 sample (and one reports logprobs): the others keep their own picks
    kinds = [dict(temperature=0), dict(temperature=1.0, seed=1),
             dict(temperature=0, logprobs=True), dict(temperature=1.0, seed=2, logprobs=True),
             dict(temperature=0)]
    some = sample(logits.clone(), [_state(vocab=40, **kw) for kw in kinds])
    assert [some.token_ids[i] for i in (0, 2, 4)] == [best[0], best[2], best[4]]
    assert some.logprobs[2] == pytest.approx(lp[2, best[2]].item())
    assert some.logprobs[3] == pytest.approx(lp[3, some.token_ids[3]].item())
    assert [some.logprobs[i] for i in (0, 1, 4)] == [None, None, None]


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -1.0), ("top_p", 0.0), ("top_k", -1), ("max_tokens", -1),
    ("frequency_penalty", 3.0), ("repetition_penalty", 0.0), ("top_logprobs", 30),
    ("logit_bias", {5: 101.0}), ("logit_bias", {-1: 1.0}),
])
def test_bad_parameters_name_the_field(field, value):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field
