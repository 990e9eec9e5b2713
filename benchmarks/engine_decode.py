"""Decode speed of the gptstore engine vs transformers `generate`, on one machine, one run.

    .venv/bin/python benchmarks/engine_decode.py [--home /tmp/gptstore-bench]
    .venv/bin/python benchmarks/engine_decode.py --model DIR    # any local HF causal LM
    .venv/bin/python benchmarks/engine_decode.py --gemv aten --attention sdpa  # other kernels
    .venv/bin/python benchmarks/engine_decode.py --adapter-rank 8  # LoRA models too
    .venv/bin/python benchmarks/engine_decode.py --dtype int4  # 4-bit weights

Prints the machine (CPU, GEMM GFLOP/s in fp32 and bf16, memory bandwidth), then per
round and as best / median over rounds:
  * single stream: decode tokens/s after the first token of `generate` (the peer, in its
    own process on its main thread, `from_pretrained` defaults: benchmarks/peer_generate.py)
    and of the engine, with the ceiling bandwidth / weight bytes per token (the bandwidth
    read just before each round's single stream: the reading moves from minute to
    minute on a shared host);
  * 16 concurrent streams: total tokens/s of the engine vs `generate` one request after
    another (the peer serves one request at a time).
Rounds alternate the two, and the engine is shut down while the peer runs (its idle
threads would slow the peer). With --adapter-rank R, each round also runs the engine on
a random LoRA adapter of rank R on every projection (PEFT, seeded; as a fine-tune of the
store is served): one stream on it, and 16 streams with it on every other stream (the
rest on the base), beside the base figures. Default model: the store's built-in
SmolLM2-135M-Instruct (pulled into --home once), gptstore in the dtype it measured best
here (or --dtype).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch
from finetune_vs_hf import open_store
from machine import OtherLoad, bandwidth_now, describe_machine
from peer_generate import run_peer

from gptstore.inference import (
    Engine,
    EngineConfig,
    GenerationRequest,
    ModelSpec,
    SamplingParams,
    native,
)
from gptstore.inference.loader import preferred_dtype
from gptstore.inference.precision import (
    decode_dtype_name,
    int4_profile,
    machine_profile,
)
from gptstore.inference.types import ATTENTION_KERNELS, GEMV_KERNELS, INT4_TORCH, ROWS_LOOPS

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.", "List three prime numbers.",
    "Who wrote Hamlet?", "Translate 'good morning' to Spanish.",
    "What is 12 times 12?", "Name a famous painter.", "Why is the sky blue?",
    "Give me a synonym for happy.", "What does a CPU do?", "Describe a cat.",
    "How many legs does a spider have?", "What is the boiling point of water?",
    "Suggest a name for a dog.", "What is machine learning?",
]


def load(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def random_adapter(model: Any, rank: int, folder: Path) -> Path:
    """A PEFT LoRA adapter of `rank` on every projection of `model` with random, seeded
    weights (B non-zero, so it changes the outputs), saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    peft_model.save_pretrained(str(folder))
    peft_model.unload()  # the base as it was
    return folder


def prompts(tokenizer: Any, n: int) -> list[list[int]]:
    out = []
    for question in (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        out.append(tokenizer(text)["input_ids"])
    return out


def engine_single(engine: Engine, prompt: list[int], n: int, model: str = "m") -> float:
    """Decode tokens/s after the first token, one request alone."""
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    first = 0.0
    for i, _event in enumerate(engine.submit(GenerationRequest(prompt, model, params))):
        if i == 0:
            first = time.perf_counter()
    return (n - 1) / (time.perf_counter() - first)


def engine_many(engine: Engine, batch: list[list[int]], n: int,
                models: tuple[str, ...] | list[str] = ("m",)) -> float:
    """Total tokens/s of the batch's requests at once, request i on models[i % len]."""
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    start = time.perf_counter()
    handles = [engine.submit(GenerationRequest(p, models[i % len(models)], params))
               for i, p in enumerate(batch)]
    total = sum(len(h.result().token_ids) for h in handles)
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-bench"))
    parser.add_argument("--model", type=Path, help="HF causal-LM folder (default: built-in)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32", "int4"],
                        help="gptstore's dtype (default: measured best on this machine; "
                        "int4: 4-bit projections on the 4-bit kernel measured here)")
    parser.add_argument("--peer-dtype", choices=["bfloat16", "float32"],
                        help="generate's dtype (default: from_pretrained's own)")
    parser.add_argument("--gemv", choices=GEMV_KERNELS,
                        help="kernel of 1-2 row bf16 products (default: measured fastest here)")
    parser.add_argument("--gemv-rows", type=int, default=None,
                        help="most rows of a decode step on the native GEMV (default: as "
                             "measured here)")
    parser.add_argument("--rows-loop", choices=ROWS_LOOPS,
                        help="loop of the native GEMV's steps of several bf16 rows "
                             "(default: measured faster here)")
    parser.add_argument("--attention", choices=ATTENTION_KERNELS,
                        help="kernel of decode rows' attention (default: measured faster here)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--adapter-rank", type=int, default=0,
                        help="also decode with a random LoRA adapter of this rank")
    parser.add_argument("--peer-prompts", type=int, default=2,
                        help="single-stream prompts the peer runs per round")
    args = parser.parse_args()

    print(describe_machine(), flush=True)
    settings, catalog, base = open_store(args.home)
    folder = args.model or catalog.snapshot(base)
    # int4: 4-bit projections with bf16 activations, on the 4-bit kernel measured here
    int4 = args.dtype == "int4"
    dtype = torch.bfloat16 if int4 else getattr(torch, args.dtype) if args.dtype \
        else preferred_dtype(settings)
    # the product's default: a bf16 copy for 1-row steps where this CPU measured it faster
    decode_dtype = None if args.dtype else decode_dtype_name(settings.home)
    profile = machine_profile(settings.home)
    gemv = args.gemv or profile.gemv  # default: measured fastest here
    # the decode steps the native GEMV serves: as measured, or 1-2 rows with --gemv-rows
    gemv_rows = args.gemv_rows or profile.gemv_rows
    rows_loop = args.rows_loop or profile.rows_loop
    attention = args.attention or profile.attention
    int4_gemv = int4_profile(settings.home).int4_gemv if int4 else INT4_TORCH
    # loaded on a short-lived thread: a team of OpenMP workers left on this main thread
    # would slow every parallel region of the engine's (docs/design.md, "Threads")
    loaded: list[tuple[Any, Any]] = []
    loader = threading.Thread(target=lambda: loaded.append(load(folder, dtype)))
    loader.start()
    loader.join()
    model, tokenizer = loaded.pop()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = prompts(tokenizer, args.streams)
    spec = ModelSpec(base_key="m", base_loader=lambda: load(folder, dtype))
    specs = {"m": spec}
    if args.adapter_rank:
        specs["m+lora"] = ModelSpec(base_key="m", base_loader=spec.base_loader,
                                    adapter_dir=random_adapter(model, args.adapter_rank,
                                                               args.home / "bench-adapter"))
    del model
    copy = f" with a {decode_dtype} copy for decode steps" if decode_dtype else ""
    # the rows loop is a choice only where the CPU has AVX-512 (precision._time_rows_loop)
    loop = f"their products on the {rows_loop} loop" if native.gemv_avx512_supported() \
        else "their products on the AVX2 loop, two rows at a time"
    copy += f", bf16 1-row kernel {gemv} (decode steps of up to {gemv_rows} rows, " \
        f"{loop}), decode attention {attention}"
    if int4:
        copy += f", 4-bit projections on the {int4_gemv} int4 kernel"
    print(f"{folder.name}: gptstore {str(dtype).removeprefix('torch.')}{copy} "
          f"({weight_bytes / 1e6:.0f} MB of weights), {args.tokens} new tokens", flush=True)

    rows: dict[str, list[float]] = {k: [] for k in ("peer", "peer_seq", "ours", "many",
                                                    "lora", "lora_many", "bandwidth")}
    other = OtherLoad()
    peer_dtype = "?"
    for r in range(args.rounds):
        other()
        peer = run_peer(folder, batch[r:r + args.peer_prompts], args.tokens, args.peer_dtype)
        peer_dtype = peer["dtype"]
        rows["peer"].append(statistics.median(run["decode_tok_s"] for run in peer["runs"]))
        rows["peer_seq"].append(sum(run["tokens"] for run in peer["runs"])
                                / sum(run["seconds"] for run in peer["runs"]))
        peer_other = other()
        engine = Engine(specs.__getitem__, EngineConfig(max_running=args.streams,
                                                         decode_dtype=decode_dtype,
                                                         gemv=gemv, gemv_rows=gemv_rows,
                                                         rows_loop=rows_loop,
                                                         decode_attention=attention,
                                                         quantize="int4" if int4 else None,
                                                         int4_gemv=int4_gemv))
        engine.tokenizer("m")  # load
        engine_single(engine, batch[0][:8], 4)  # warm-up
        rows["bandwidth"].append(bandwidth_now())
        rows["ours"].append(engine_single(engine, batch[r % len(batch)], args.tokens))
        rows["many"].append(engine_many(engine, batch, args.tokens))
        adapter = ""
        if args.adapter_rank:
            engine_single(engine, batch[0][:8], 4, "m+lora")  # loads the adapter
            rows["lora"].append(engine_single(engine, batch[r % len(batch)], args.tokens,
                                              "m+lora"))
            rows["lora_many"].append(engine_many(engine, batch, args.tokens,
                                                 ["m+lora", "m"]))
            adapter = f" | adapter: 1 stream {rows['lora'][-1]:5.1f} tok/s, " \
                f"{args.streams} streams (every other) {rows['lora_many'][-1]:6.1f} tok/s"
        engine.shutdown()
        print(f"round {r + 1}: generate ({peer_dtype}) {rows['peer'][-1]:5.1f} tok/s | engine "
              f"1 stream {rows['ours'][-1]:5.1f} tok/s (memory read "
              f"{rows['bandwidth'][-1]:.1f} GB/s just before) | engine {args.streams} streams "
              f"{rows['many'][-1]:6.1f} tok/s{adapter} | other processes' CPU: "
              f"{peer_other:.0%} (peer), {other():.0%} (engine)", flush=True)

    read_bytes = weight_bytes // 2 if decode_dtype else weight_bytes  # what a 1-row step reads
    # each round's single stream against the ceiling of the bandwidth read just before it
    shares = [ours * read_bytes / (gbs * 1e9)
              for ours, gbs in zip(rows["ours"], rows["bandwidth"], strict=True)]
    for label, pick in (("best", max), ("median", statistics.median)):
        peer_rate, ours, many = pick(rows["peer"]), pick(rows["ours"]), pick(rows["many"])
        seq = pick(rows["peer_seq"])
        # the ceiling is for the weights as loaded; 4-bit projections read fewer bytes
        share = "" if int4 else \
            f" ({pick(shares):.0%} of the bandwidth ceiling, {label} of the rounds' " \
            f"{', '.join(f'{gbs * 1e9 / read_bytes:.0f}' for gbs in rows['bandwidth'])} tok/s)"
        print(f"{label:6s}: single stream {ours:.1f} vs generate {peer_rate:.1f} tok/s = "
              f"{ours / peer_rate:.2f}x{share}; {args.streams} streams {many:.1f} tok/s = "
              f"{many / seq:.1f}x generate one after another")
        if args.adapter_rank:
            lora, lora_many = pick(rows["lora"]), pick(rows["lora_many"])
            print(f"{'':6s}  adapter (rank {args.adapter_rank}): single stream {lora:.1f} "
                  f"tok/s = {lora / ours:.2f}x the base's; {args.streams} streams, every "
                  f"other on it, {lora_many:.1f} tok/s = {lora_many / many:.2f}x")
    catalog.close()


if __name__ == "__main__":
    main()
