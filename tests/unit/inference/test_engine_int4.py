"""int4 serving (`GPTSTORE_INFERENCE_DTYPE=int4`): 4-bit projection weights in groups of
32 with bf16 activations. Opt-in and approximate, so it is compared with the bf16 model
within quantisation error, and the grid claim (Q4_1 weights come back exactly) is tested
on weights built on that grid."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import causal_spec

from gptstore.errors import InvalidRequest
from gptstore.inference import EngineConfig, SamplingParams
from gptstore.inference.models import Int4Linear, Linear, RowInput, build_runner
from gptstore.inference.precision import serving_dtype_name
from gptstore.inference.store import engine_config
from gptstore.settings import Settings

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41], [100, 101, 102]]


def _q4_1_weight(n_out: int, n_in: int, seed: int = 0) -> torch.Tensor:
    """Weights as a Q4_1 GGUF dequantises them: per group of 32, q * d + m with q in
    0..15, every group using both ends of its range (as Q4_1's quantiser makes them)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n_out, n_in // 32, 32), generator=gen)
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(n_out, n_in // 32, 1, generator=gen) * 0.01 + 0.001).bfloat16().float()
    m = (torch.randn(n_out, n_in // 32, 1, generator=gen) * 0.05).bfloat16().float()
    return (q * d + m).reshape(n_out, n_in)


def test_int4_recovers_a_q4_1_grid():
    weight = _q4_1_weight(48, 96)
    layer = Int4Linear(weight.bfloat16().t())
    x = torch.randn(5, 96)
    expected = x @ weight.t()
    got = layer(x.bfloat16()).float()
    # Only bf16 rounding (activations, scales, the kernel's sums) separates the two.
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    plain_bf16 = Linear(weight.bfloat16().t())(x.bfloat16()).float()
    assert (got - plain_bf16).abs().max() < 0.02 * expected.abs().max()


def test_int4_error_on_arbitrary_weights_is_bounded():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 64, generator=gen)
    x = torch.randn(3, 64, generator=gen)
    got = Int4Linear(weight.t(), bias=torch.ones(32))(x, residual=torch.ones(3, 32)).float()
    expected = x @ weight.t() + 2
    groups = weight.reshape(32, 2, 32)
    step = ((groups.amax(-1) - groups.amin(-1)) / 15).repeat_interleave(32, dim=1)
    bound = (x.abs() @ (step / 2 + 0.01).t()) + 0.05 * expected.abs()
    assert ((got - expected).abs() <= bound).all()


def test_shapes_the_kernel_cannot_take_stay_unquantised():
    assert not Int4Linear.fits(torch.zeros(48, 16))  # inputs not a multiple of 32
    assert not Int4Linear.fits(torch.zeros(32, 40))  # outputs not a multiple of 16


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_int4_runner_stays_close_to_the_bf16_model(tiny_dirs, arch):
    from transformers import AutoModelForCausalLM

    def load():  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs[arch],
                                                    dtype=torch.bfloat16).eval()

    exact = build_runner(load(), max_slots=4)
    quantized = build_runner(load(), max_slots=4, quantize="int4")
    assert any(isinstance(layer, Int4Linear) for layer in quantized._linears)
    rows = lambda r: [RowInput(r.allocate(), p, 0) for p in PROMPTS]  # noqa: E731
    a, b = exact.forward(rows(exact)), quantized.forward(rows(quantized))
    # Random Gaussian weights are the worst case for 16 levels per group (0.94-0.96
    # here); a misplaced scale or offset gives ~0.
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert (cosine > 0.9).all(), cosine
    # 4-bit copies: a quarter of the bf16 weights they stand for (plus scales), less
    # than the packed bf16 copies where oneDNN packs bf16 at all (not on AVX2-only CPUs)
    bf16_bytes = sum(2 * layer.weight_t.numel() for layer in quantized._linears
                     if isinstance(layer, Int4Linear))
    assert 0 < quantized.extra_nbytes < bf16_bytes / 2
    if exact.extra_nbytes:
        assert quantized.extra_nbytes < exact.extra_nbytes


@pytest.mark.parametrize("int4_gemv", ["torch", "native", "native-all"])
def test_engine_serves_int4_and_refuses_unknown_quantisation(tiny_dirs, make_engine, int4_gemv):
    engine = make_engine({"m": causal_spec(tiny_dirs["llama"])}, quantize="int4",
                         int4_gemv=int4_gemv)
    assert engine.config.dtype == "bfloat16"
    out = engine.generate("m", PROMPTS[0], SamplingParams(max_tokens=5, temperature=0,
                                                          ignore_eos=True))
    assert len(out.token_ids) == 5
    with pytest.raises(InvalidRequest, match="int8"):
        EngineConfig(quantize="int8")


def test_inference_dtype_setting_maps_to_the_engine(monkeypatch):
    monkeypatch.setenv("GPTSTORE_INFERENCE_DTYPE", "int4")
    config = engine_config(Settings())
    assert (config.dtype, config.quantize) == ("bfloat16", "int4")
    auto_settings = Settings(inference_dtype="auto")
    auto = engine_config(auto_settings)  # the dtype measured faster here (precision.py)
    assert (auto.dtype, auto.quantize) == (serving_dtype_name(auto_settings.home), None)
    fp32 = engine_config(Settings(inference_dtype="float32", max_batch=3, max_queue=7))
    assert (fp32.dtype, fp32.quantize) == ("float32", None)
    assert (fp32.max_running, fp32.max_queue) == (3, 7)
    assert engine_config(Settings(), max_running=4).max_running == 4
