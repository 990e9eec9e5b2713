"""bf16, the serving dtype where it measures faster: packed-weight batches and the GEMV path
(and packed fp32 weights, used for batches on CPUs without AMX).

Exact token parity is a fp32 property (bf16 rounds differently in fused kernels), so
here the logits are compared with transformers' own bf16 forward within bf16 noise.
"""

from __future__ import annotations

import pytest
import torch

from gptstore.inference.models import RowInput, build_runner

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41], [100, 101, 102]]


def _bf16(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_logits_match_transformers_within_rounding(tiny_dirs, arch):
    reference, model = _bf16(tiny_dirs[arch]), _bf16(tiny_dirs[arch])
    runner = build_runner(model, max_slots=4)
    if torch.backends.mkldnn.is_available():
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
    if torch.backends.mkldnn.is_available():
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
