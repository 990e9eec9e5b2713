"""bf16, the serving dtype where it measures faster: packed-weight batches and the GEMV path
(and packed fp32 weights, used for batches on CPUs without AMX).

Exact token parity is a fp32 property (bf16 rounds differently in fused kernels), so
here the logits are compared with transformers' own bf16 forward within bf16 noise.
"""

from __future__ import annotations

import pytest
import torch

from gptstore.inference.models import RowInput, build_runner
from gptstore.inference.models.base import can_pack

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41], [100, 101, 102]]


def _bf16(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_logits_match_transformers_within_rounding(tiny_dirs, arch):
    reference, model = _bf16(tiny_dirs[arch]), _bf16(tiny_dirs[arch])
    runner = build_runner(model, max_slots=4)
    if can_pack(torch.bfloat16):
        assert runner.extra_nbytes > 0  # batched steps use packed weights
    slots = [runner.allocate() for _ in PROMPTS]
    batched = runner.forward([RowInput(s, p, 0) for s, p in zip(slots, PROMPTS, strict=True)])
    single = runner.forward([RowInput(slots[0], [7], len(PROMPTS[0]))])  # GEMV path
    with torch.inference_mode():
        for i, prompt in enumerate(PROMPTS):
            expected = reference(torch.tensor([prompt])).logits[0, -1].float()
            assert (batched[i] - expected).abs().max() < 0.15
            assert batched[i].argmax() == expected.argmax()
        expected = reference(torch.tensor([[*PROMPTS[0], 7]])).logits[0, -1].float()
    assert (single[0] - expected).abs().max() < 0.15


@pytest.mark.parametrize(("dtype", "tolerance"),
                         [(torch.bfloat16, 0.15), (torch.float32, 1e-4)])
def test_packed_and_plain_weights_agree(tiny_dirs, dtype, tolerance):
    from transformers import AutoModelForCausalLM

    def load():  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=dtype).eval()

    packed = build_runner(load(), max_slots=2, pack=True)
    plain = build_runner(load(), max_slots=2, pack=False)
    rows = lambda runner: [RowInput(runner.allocate(), p, 0) for p in PROMPTS[:2]]  # noqa: E731
    a, b = packed.forward(rows(packed)), plain.forward(rows(plain))
    assert (a - b).abs().max() < tolerance
    assert plain.extra_nbytes == 0
    if can_pack(dtype):
        assert packed.extra_nbytes > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_step_of_prompt_chunks_only_wants_no_logits(tiny_dirs, arch):
    """A long prompt's middle chunk asks for no logits: the bf16 head (with its top-k
    refinement) must return an empty batch, not fail."""
    runner = build_runner(_bf16(tiny_dirs[arch]), max_slots=2)
    slot = runner.allocate()
    prompt = list(range(10, 50))
    none = runner.forward([RowInput(slot, prompt[:24], 0, want_logits=False)])
    assert none.shape[0] == 0
    rest = runner.forward([RowInput(slot, prompt[24:], 24)])
    whole_slot = runner.allocate()
    whole = runner.forward([RowInput(whole_slot, prompt, 0)])
    assert rest.shape == whole.shape == (1, runner.vocab_size)
    assert rest[0].argmax() == whole[0].argmax()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_top_layers_mlp_runs_only_on_the_rows_whose_logits_are_wanted(tiny_dirs, arch):
    """Past the top layer's attention (whose keys and values the cache keeps) only the
    rows whose logits are wanted matter: a prompt read for its last token sends one row
    through the top layer's MLP, a chunk wanting no logits none, a scored prompt all;
    the layers below always see every token. The logits are those of a runner whose
    top layer sees every token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32)
    runner = build_runner(model.eval(), max_slots=4)
    seen: dict[str, list[int]] = {"top": [], "below": []}

    def spy(linear, key):  # type: ignore[no-untyped-def]
        def call(x, residual=None):  # type: ignore[no-untyped-def]
            seen[key].append(x.shape[0])
            return linear(x, residual)
        return call

    top, below = runner.layers[-1], runner.layers[0]
    name = "down" if arch == "llama" else "out"
    setattr(top, name, spy(getattr(top, name), "top"))
    setattr(below, name, spy(getattr(below, name), "below"))
    prompt = list(range(10, 19))
    logits = runner.forward([RowInput(runner.allocate(), prompt, 0)])
    chunk = runner.forward([RowInput(runner.allocate(), prompt[:5], 0, want_logits=False)])
    scored = runner.forward([RowInput(runner.allocate(), prompt, 0, all_logits=True)])
    assert seen == {"top": [1, 9], "below": [9, 5, 9]}
    assert chunk.shape[0] == 0
    assert (logits[0] - scored[-1]).abs().max() < 1e-5  # top layer on 1 row vs on all 9


def test_a_scoring_step_of_one_token_stays_off_the_native_decode_steps_copy(tiny_dirs):
    """A scored prompt's last chunk of one token is a decode row; where every layer runs
    as one native call on the bf16 copy of fp32 weights, an exact step (one that scores
    a prompt) runs layer by layer on the fp32 weights instead."""
    from gptstore.inference import native

    if native.library() is None:
        pytest.skip("the native kernels do not build on this CPU")
    exact = build_runner(_fp32(tiny_dirs["llama"]), max_slots=2, pack=False)
    mixed = build_runner(_fp32(tiny_dirs["llama"]), max_slots=2, pack=False,
                         decode_dtype=torch.bfloat16, gemv="native", gemv_rows=16,
                         attention="native")
    assert mixed.decode_step is not None  # type: ignore[attr-defined]
    prompt = PROMPTS[0]

    def last_token(runner, all_logits: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
        slot = runner.allocate()  # the prompt's first chunk scored: on the fp32 weights
        runner.forward([RowInput(slot, prompt[:-1], 0, want_logits=False, all_logits=True)])
        return runner.forward([RowInput(slot, prompt[-1:], len(prompt) - 1,
                                        all_logits=all_logits)])

    expected = last_token(exact, True)
    assert (last_token(mixed, True) - expected).abs().max() < 1e-5
    assert (last_token(mixed, False) - expected).abs().max() > 1e-4  # the copy's rounding


def _fp32(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fp32_model_decodes_single_rows_on_its_bf16_copy(tiny_dirs, arch):
    """Where a CPU serves batches best in fp32 but one row best in bf16 (an AVX2-only
    EPYC), the runner keeps a bf16 copy for 1-2 row steps: batches stay exact fp32, a
    single row is within bf16 rounding of fp32 and picks the same greedy token (its top
    logits are recomputed from the fp32 weights)."""
    exact = build_runner(_fp32(tiny_dirs[arch]), max_slots=4, pack=False)
    mixed = build_runner(_fp32(tiny_dirs[arch]), max_slots=4, pack=False,
                         decode_dtype=torch.bfloat16)
    projections = sum(layer.weight_t.numel() for layer in mixed._linears)
    assert mixed.extra_nbytes == 2 * projections  # a bf16 copy of every projection

    def run(runner):  # type: ignore[no-untyped-def]
        slots = [runner.allocate() for _ in PROMPTS]
        batch = runner.forward([RowInput(s, p, 0) for s, p in zip(slots, PROMPTS, strict=True)])
        single = runner.forward([RowInput(slots[0], [7], len(PROMPTS[0]))])
        return batch, single

    (batch_a, single_a), (batch_b, single_b) = run(exact), run(mixed)
    assert torch.equal(batch_a, batch_b)  # 3 rows: the fp32 weights, bit for bit
    assert not torch.equal(single_a, single_b)  # 1 row: the copy ran
    assert (single_a - single_b).abs().max() < 0.15
    assert single_a.argmax() == single_b.argmax()
    top = single_b[0].topk(4).indices
    # the refined candidates are fp32 products of the (bf16-computed) hidden state,
    # so they stay close to the exact ones while the tail keeps bf16 rounding
    assert (single_a[0, top] - single_b[0, top]).abs().max() < 0.05


def test_weights_stay_unpacked_where_onednn_cannot_pack_them(monkeypatch):
    """oneDNN refuses bf16 packing on CPUs without AVX-512 (an AVX2-only EPYC):
    the projection then runs unpacked instead of failing the model's load."""
    from gptstore.inference.models import base

    def refuse(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    base.can_pack.cache_clear()
    try:
        weight = torch.randn(8, 16)
        linear = base.Linear.of(weight, pack=True)
        assert linear.packed is None and linear.extra_nbytes == 0
        x = torch.randn(5, 16)
        assert torch.allclose(linear(x), x @ weight.t())
    finally:
        monkeypatch.undo()
        base.can_pack.cache_clear()


def _rows_through_packed(monkeypatch):  # type: ignore[no-untyped-def]
    """A spy on oneDNN's packed product: the row counts of its calls, in order."""
    real = torch.ops.mkldnn._linear_pointwise
    rows: list[int] = []

    class Spy:
        def __call__(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
            rows.append(x.shape[0])
            return real(x, *args, **kwargs)

        def binary(self, x, *args, **kwargs):  # type: ignore[no-untyped-def]
            rows.append(x.shape[0])  # the residual add fused into the product
            return real.binary(x, *args, **kwargs)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    return rows


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_single_rows_run_on_packed_weights_where_that_kernel_measured_faster(
        tiny_dirs, arch, monkeypatch):
    """Where packed oneDNN measured faster than ATen's GEMV for one bf16 row (an AMX
    Sapphire Rapids: 16 vs 10 GB/s of weights), 1-2 row steps run on the packed weights
    (`gemv="onednn"`) instead, for bf16 weights and for an fp32 model's bf16 decode copy:
    the same greedy token, logits within bf16 rounding, and batches unchanged."""
    if not can_pack(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 weights on this CPU")
    for load, decode_dtype in ((_bf16, None), (_fp32, torch.bfloat16)):
        aten = build_runner(load(tiny_dirs[arch]), max_slots=4, decode_dtype=decode_dtype)
        onednn = build_runner(load(tiny_dirs[arch]), max_slots=4, decode_dtype=decode_dtype,
                              gemv="onednn")
        outputs = []
        for runner in (aten, onednn):
            slots = [runner.allocate() for _ in PROMPTS]
            batch = runner.forward([RowInput(s, p, 0)
                                    for s, p in zip(slots, PROMPTS, strict=True)])
            rows = _rows_through_packed(monkeypatch)
            single = runner.forward([RowInput(slots[0], [7], len(PROMPTS[0]))])
            monkeypatch.undo()
            outputs.append((batch, single, rows))
        (batch_a, single_a, rows_a), (batch_b, single_b, rows_b) = outputs
        assert torch.equal(batch_a, batch_b)  # 3+ rows: packed either way
        assert 1 not in rows_a  # ATen's GEMV for the single row
        assert rows_b and set(rows_b) == {1}  # every projection of the step, packed
        assert (single_a - single_b).abs().max() < 0.15
        assert single_a.argmax() == single_b.argmax()
    # the fp32 model keeps its decode copy packed only, not twice
    projections = sum(layer.weight_t.numel() for layer in onednn._linears)
    assert all(layer.decode_weight_t is None for layer in onednn._linears)
    assert onednn.extra_nbytes >= projections * (4 + 2)  # packed fp32 + packed bf16 copy
