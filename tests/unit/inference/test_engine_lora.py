"""LoRA adapters: mixed-adapter batches match PEFT row by row; LRU eviction."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from inference_helpers import causal_spec, hf_greedy, load_causal

from gptstore.errors import InvalidRequest
from gptstore.inference import GenerationRequest, SamplingParams

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [100, 101, 102, 103, 104]]


def make_adapter(base_dir: Path, out: Path, arch: str, seed: int, *, rank: int = 4,
                 targets: list[str] | None = None, **lora_kw: object) -> Path:
    """A PEFT LoRA adapter with random (non-zero) lora_B, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_causal(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets or TARGETS[arch],
                        **lora_kw)  # type: ignore[arg-type]
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(out)
    return out


def peft_greedy(base_dir: Path, adapter: Path, prompt: list[int], n: int) -> list[int]:
    from peft import PeftModel

    model, _ = load_causal(base_dir)
    return hf_greedy(PeftModel.from_pretrained(model, adapter).eval(), prompt, n)


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_adapter_batch_matches_peft_per_row(tiny_dirs, make_engine, tmp_path, arch):
    base_dir = tiny_dirs[arch]
    a = make_adapter(base_dir, tmp_path / "a", arch, seed=1)
    b = make_adapter(base_dir, tmp_path / "b", arch, seed=2, rank=8,
                     targets=TARGETS[arch][:2], use_rslora=True)
    specs = {"base": causal_spec(base_dir, "k"), "a": causal_spec(base_dir, "k", a),
             "b": causal_spec(base_dir, "k", b)}
    engine = make_engine(specs, start=False)
    # Interleaved so adapter groups are not contiguous rows: a, base, b, a, b, base.
    plan = [("a", 0), ("base", 1), ("b", 2), ("a", 1), ("b", 0), ("base", 2)]
    handles = [engine.submit(GenerationRequest(PROMPTS[p], name, _greedy(8)))
               for name, p in plan]
    engine.start()  # all six in one batch
    outs = [h.result(timeout=60).token_ids for h in handles]
    assert engine.stats()["loaded"] == {"k": [str(a.resolve()), str(b.resolve())]}

    reference, _ = load_causal(base_dir)
    expected = {"base": lambda p: hf_greedy(reference, p, 8),
                "a": lambda p: peft_greedy(base_dir, a, p, 8),
                "b": lambda p: peft_greedy(base_dir, b, p, 8)}
    for (name, p), out in zip(plan, outs, strict=True):
        assert out == expected[name](PROMPTS[p]), (name, p)
    assert outs[0] != outs[3] or PROMPTS[0] == PROMPTS[1]
    assert outs[0] != hf_greedy(reference, PROMPTS[0], 8)  # the adapter changes the output


def test_adapters_are_evicted_least_recently_used(tiny_dirs, make_engine, tmp_path):
    base_dir = tiny_dirs["llama"]
    folders = [make_adapter(base_dir, tmp_path / f"ad{i}", "llama", seed=i) for i in range(3)]
    specs = {f"ad{i}": causal_spec(base_dir, "k", f) for i, f in enumerate(folders)}
    probe = make_engine(specs)
    probe.generate("ad0", PROMPTS[0], _greedy(1))
    one = probe.registry.adapter_bytes
    engine = make_engine(specs, adapter_budget_bytes=int(2.5 * one))
    first = engine.generate("ad0", PROMPTS[0], _greedy(4)).token_ids
    engine.generate("ad1", PROMPTS[0], _greedy(4))
    engine.generate("ad0", PROMPTS[0], _greedy(4))  # ad0 is now more recent than ad1
    engine.generate("ad2", PROMPTS[0], _greedy(4))
    assert engine.registry.evictions == [str(folders[1].resolve())]
    assert engine.registry.adapter_bytes <= 2.5 * one
    # An evicted adapter loads again on its next use and still gives the same tokens.
    engine.generate("ad1", PROMPTS[0], _greedy(4))
    assert engine.generate("ad0", PROMPTS[0], _greedy(4)).token_ids == first


def test_bases_are_evicted_under_the_budget_but_not_while_in_use(tiny_dirs, make_engine):
    specs = {"g": causal_spec(tiny_dirs["gpt2"], "g"), "l": causal_spec(tiny_dirs["llama"], "l")}
    engine = make_engine(specs, base_budget_bytes=1, start=False)
    busy = engine.submit(GenerationRequest(PROMPTS[0], "g", _greedy(3)))  # pins base g
    engine.submit(GenerationRequest(PROMPTS[0], "l", _greedy(3)))
    assert engine.registry.evictions == []  # g is in use: over budget, but kept
    engine.start()
    busy.result(timeout=30)
    engine.generate("l", PROMPTS[0], _greedy(2), timeout=30)
    _wait_idle(engine)
    assert engine.registry.evictions == ["g"]
    assert set(engine.stats()["loaded"]) == {"l"}  # the last used base stays


def _wait_idle(engine) -> None:
    """The engine thread releases a finished request just after its last event."""
    deadline = time.monotonic() + 10
    while any(b.pins for b in engine.registry._bases.values()) and time.monotonic() < deadline:
        time.sleep(0.005)


def test_unsupported_adapters_are_refused_clearly(tiny_dirs, make_engine, tmp_path):
    base_dir = tiny_dirs["llama"]
    dora = make_adapter(base_dir, tmp_path / "dora", "llama", seed=1, use_dora=True)
    engine = make_engine({"d": causal_spec(base_dir, "k", dora),
                          "missing": causal_spec(base_dir, "k", tmp_path / "nope")})
    with pytest.raises(InvalidRequest, match="DoRA"):
        engine.submit(GenerationRequest(PROMPTS[0], "d", _greedy(2)))
    with pytest.raises(InvalidRequest, match=r"adapter_config\.json"):
        engine.submit(GenerationRequest(PROMPTS[0], "missing", _greedy(2)))
    # The base stays usable and unpinned after the failed loads.
    assert engine.registry._bases["k"].pins == 0
