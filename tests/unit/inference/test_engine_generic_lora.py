"""LoRA on the generic runner (architectures without a hand-written decoder): greedy
tokens of mixed batches (base and two adapters) match PEFT row by row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from inference_helpers import causal_spec, hf_greedy, load_causal
from test_engine_lora import make_adapter, peft_greedy

from gptstore.inference import GenerationRequest, SamplingParams

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [100, 101, 102, 103, 104]]
#: PEFT target modules of each architecture (Phi-3 fuses q/k/v and gate/up itself)
TARGETS = {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "v_proj", "down_proj"],
}


def tiny_other(arch: str, out: Path, tokenizer_dir: Path) -> Path:
    """A tiny random Phi-3 or Qwen3 (no hand-written decoder) with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config, Qwen3Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 3, "initializer_range": 0.2, "tie_word_embeddings": False}
    config = Phi3Config(**common) if arch == "phi3" else Qwen3Config(head_dim=8, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["phi3", "qwen3", "llama"])
def test_mixed_adapter_batch_on_the_generic_runner_matches_peft(tiny_dirs, make_engine,
                                                                tmp_path, arch):
    if arch == "llama":  # a supported architecture, forced onto the generic runner
        base_dir, fast = tiny_dirs["llama"], False
    else:
        base_dir, fast = tiny_other(arch, tmp_path / arch, tiny_dirs["llama"]), True
    a = make_adapter(base_dir, tmp_path / "a", arch, seed=1, targets=TARGETS[arch])
    b = make_adapter(base_dir, tmp_path / "b", arch, seed=2, rank=8,
                     targets=TARGETS[arch][:2], use_rslora=True)
    specs = {"base": causal_spec(base_dir, "k"), "a": causal_spec(base_dir, "k", a),
             "b": causal_spec(base_dir, "k", b)}
    engine = make_engine(specs, start=False, use_fast_path=fast)
    plan = [("a", 0), ("base", 1), ("b", 2), ("a", 1), ("b", 0), ("base", 2)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    handles = [engine.submit(GenerationRequest(PROMPTS[p], name, params)) for name, p in plan]
    engine.start()  # all six in one batch: adapters and the base mixed in each step
    outs = [h.result(timeout=60).token_ids for h in handles]
    assert engine.model_info("a").runner == "GenericRunner"

    reference, _ = load_causal(base_dir)
    expected = {"base": lambda p: hf_greedy(reference, p, 8),
                "a": lambda p: peft_greedy(base_dir, a, p, 8),
                "b": lambda p: peft_greedy(base_dir, b, p, 8)}
    for (name, p), out in zip(plan, outs, strict=True):
        assert out == expected[name](PROMPTS[p]), (name, p)
    assert outs[0] != hf_greedy(reference, PROMPTS[0], 8)  # the adapter changes the output
