"""Serving benchmark: gptstore's engine and HTTP server vs transformers `generate`, on
SmolLM2-135M-Instruct, in one run, with the same prompts and 128 new tokens each.

    .venv/bin/python benchmarks/serve_vs_hf.py [--home /tmp/gptstore-bench]

Prints:
 (a) single-stream decode tokens/s: gptstore engine vs `model.generate` (greedy);
 (b) aggregate tokens/s of 16 concurrent streaming HTTP clients against `gptstore serve`
     vs the same 16 requests sent one after another to `generate`;
 (c) time to first token p50 / p95 under that load;
 (b)'s ceiling from the machine line: 2 FLOPs per weight matrix entry a new token costs,
     at the machine's best GEMM rate (at most what any number of streams can reach);
 (c)'s floor the same way: the clients' prompt tokens the server did not find in its
     prefix cache (`usage.prompt_tokens_details.cached_tokens`), each a pass over the
     weights, at that rate (the least time before the last client's first token);
 (d) resident memory of 1 base + 20 LoRA adapters loaded vs the base alone, against the
     adapters' own file sizes (measured in a fresh process: see `part_d`).
Every figure is a ratio against a peer measured in the same run (this machine is noisy).
The peer is `generate` as its users run it: its own process, its main thread,
`from_pretrained`'s defaults (benchmarks/peer_generate.py), run while no engine or
server of ours is up. The machine (CPU, GEMM GFLOP/s in both dtypes, memory bandwidth)
is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import httpx
import torch
from machine import describe_machine, gemm_rates, projection_weights
from peer_generate import run_peer

from gptstore.catalog.importers import BUILTIN_NAME, ensure_builtin
from gptstore.catalog.repository import Catalog
from gptstore.inference.loader import load_tokenizer, load_version, preferred_dtype
from gptstore.inference.prompts import render_chat_prompt
from gptstore.inference.store import build_engine
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer

NEW_TOKENS = 128
QUESTIONS = [
    "Explain how a bicycle works.", "Write a short story about a lighthouse keeper.",
    "What are the benefits of regular exercise?", "Describe the water cycle.",
    "How do vaccines train the immune system?", "Give me tips for learning a new language.",
    "What is the difference between weather and climate?", "Describe a day in ancient Rome.",
    "How does a computer store numbers?", "Why is the sky blue?",
    "Write a poem about autumn leaves.", "What makes a good team leader?",
    "Explain photosynthesis to a child.", "How do airplanes stay in the air?",
    "What should I pack for a week of hiking?", "Describe how bread is made.",
]


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def our_engine(catalog: Catalog, dtype: str) -> Any:
    # `dtype` is one of the setting's values (argparse choices); Settings validates it
    return build_engine(Settings(inference_dtype=cast(Any, dtype)), catalog, max_running=16)


def part_a(catalog: Catalog, prompts: list[list[int]], dtype: str) -> dict[str, float]:
    from gptstore.inference.types import SamplingParams

    peer = run_peer(catalog.snapshot(catalog.resolve(BUILTIN_NAME)), prompts, NEW_TOKENS)
    hf_tokens = sum(run["tokens"] for run in peer["runs"])
    hf_time = sum(run["seconds"] for run in peer["runs"])
    engine = our_engine(catalog, dtype)
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    engine.generate(BUILTIN_NAME, prompts[0][:8], params)  # warm-up (loads the model)
    ours_tokens = ours_time = 0.0
    for ids in prompts:
        start = time.perf_counter()
        done = engine.generate(BUILTIN_NAME, ids, params)
        ours_time += time.perf_counter() - start
        ours_tokens += done.usage.completion_tokens
    engine.shutdown()
    hf_rate, ours_rate = hf_tokens / hf_time, ours_tokens / ours_time
    return {"hf_tok_s": hf_rate, "gptstore_tok_s": ours_rate, "ratio": ours_rate / hf_rate,
            "hf_dtype": peer["dtype"]}


def stream_one(http: httpx.Client, url: str, question: str,
               results: list[dict[str, float]]) -> None:
    """One streaming chat request on the shared client `http`; its time to first token
    counts from sending the request, as a client application sees it."""
    body = {"model": BUILTIN_NAME, "messages": [{"role": "user", "content": question}],
            "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = prompt = cached = 0
    with http.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
                tokens = usage["completion_tokens"]
                prompt = usage["prompt_tokens"]
                cached = usage["prompt_tokens_details"]["cached_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and not first:
                first = time.perf_counter() - start
    results.append({"ttft": first or 0.0, "tokens": tokens, "prompt_tokens": prompt,
                    "cached_tokens": cached, "seconds": time.perf_counter() - start})


def part_bc(home: Path, catalog: Catalog, prompts: list[list[int]], dtype: str
            ) -> dict[str, float]:
    peer = run_peer(catalog.snapshot(catalog.resolve(BUILTIN_NAME)), prompts, NEW_TOKENS)
    hf_rate = sum(run["tokens"] for run in peer["runs"]) / sum(
        run["seconds"] for run in peer["runs"])
    env = {"GPTSTORE_MAX_BATCH": "16", "GPTSTORE_INFERENCE_DTYPE": dtype}
    # One client for all 16 streams, as an application holds one (the `openai` SDK keeps
    # one httpx client per `OpenAI()`): a new `httpx` client costs ~35 ms of the caller's
    # CPU (nearly all of it `ssl.create_default_context()`), which the 16 threads here
    # serialised on the GIL and counted into every time to first token (p95 0.55-0.81 s
    # against 0.12-0.14 s with a shared client, on a tiny model whose steps cost nothing).
    pool = 2 * len(prompts)
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    with RemoteServer(home, env=env, timeout=300) as server, \
            httpx.Client(timeout=600, limits=limits) as http:
        warm: list[dict[str, float]] = []
        stream_one(http, server.url, "Hello", warm)  # loads the model
        results: list[dict[str, float]] = []
        threads = [threading.Thread(target=stream_one, args=(http, server.url, q, results))
                   for q in QUESTIONS[:len(prompts)]]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    total = sum(r["tokens"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]
    return {"hf_sequential_tok_s": hf_rate, "gptstore_16_clients_tok_s": total / elapsed,
            "ratio": total / elapsed / hf_rate, "ttft_p50_s": statistics.median(ttfts),
            "ttft_p95_s": p95, "completion_tokens": total,
            "prompt_tokens": sum(r["prompt_tokens"] for r in results),
            "cached_prompt_tokens": sum(r["cached_tokens"] for r in results)}


def flops_per_token(catalog: Catalog) -> tuple[float, float]:
    """2 FLOPs per weight of every matrix a new token is multiplied by: (the layers'
    projections, the LM head: the embedding itself where the two are tied; the
    embedding lookup is no product). A prompt token takes the first; only a prompt's
    last token, whose logits give the first new token, takes the head too."""
    per_layer, layers, config = projection_weights(catalog.snapshot(
        catalog.resolve(BUILTIN_NAME)))
    return 2.0 * layers * per_layer, 2.0 * int(config["vocab_size"]) * int(config["hidden_size"])


def adapter_name(i: int) -> str:
    return f"bench/adapter-{i}"


def make_adapters(catalog: Catalog, root: Path, count: int) -> list[tuple[str, int]]:
    """`count` LoRA adapters (r=8 on q/k/v/o) on the base, published as adapter versions."""
    from peft import LoraConfig, get_peft_model

    names = []
    base_version = catalog.resolve(BUILTIN_NAME)
    for i in range(count):
        name = adapter_name(i)
        if not catalog.exists(name):
            model = load_version(catalog, BUILTIN_NAME, dtype=torch.float32).model
            peft_model = get_peft_model(model, LoraConfig(
                r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
            gen = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for pname, p in peft_model.named_parameters():
                    if "lora_B" in pname:
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
            folder = root / f"adapter-{i}"
            peft_model.save_pretrained(str(folder))
            catalog.publish(name, folder, kind="adapter", base=base_version.ref)
        version = catalog.resolve(name)
        size = sum(f.size for f in version.files if f.path.endswith(".safetensors"))
        names.append((name, size))
    return names


def part_d(home: Path, catalog: Catalog, dtype: str, count: int = 20) -> dict[str, float]:
    """Make the adapters here, measure in a fresh process: this one has freed the models
    that made them, and a later allocation reuses that heap without showing in RSS (a full
    run once read 0.00x here and 0.62x in its own process)."""
    adapters = make_adapters(catalog, home / "adapters", count)
    child = subprocess.run(
        [sys.executable, __file__, "--home", str(home), "--dtype", dtype,
         "--adapters", str(count), "--memory-only"],
        capture_output=True, text=True, check=True)
    d = json.loads(child.stdout.strip().splitlines()[-1])
    files = sum(size for _, size in adapters)
    growth = d["rss_base_plus_adapters_mb"] - d["rss_base_mb"]
    return {**d, "adapter_files_mb": files / 1e6, "rss_growth_over_files": growth * 1e6 / files}


def measure_memory(catalog: Catalog, dtype: str, count: int) -> dict[str, float]:
    """The engine's RSS with the base alone, then with `count` adapters that exist already."""
    from gptstore.inference.types import SamplingParams

    tokenizer = load_tokenizer(catalog, BUILTIN_NAME)
    ids = render_chat_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    params = SamplingParams(max_tokens=4, temperature=0)
    engine = our_engine(catalog, dtype)
    engine.generate(BUILTIN_NAME, ids, params)
    before = rss_bytes()
    for i in range(count):
        engine.generate(adapter_name(i), ids, params)
    after = rss_bytes()
    # the engine's own count of the adapters' tensors, beside what the process grew by
    # (which reads low where the allocator hands out memory the process already held)
    held = engine.stats()["adapter_bytes"]
    engine.shutdown()
    return {"rss_base_mb": before / 1e6, "rss_base_plus_adapters_mb": after / 1e6,
            "adapter_tensors_mb": held / 1e6}


def main() -> None:
    global NEW_TOKENS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-bench"))
    parser.add_argument("--single-prompts", type=int, default=3)
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "bfloat16", "float32", "int4"],
                        help="gptstore's GPTSTORE_INFERENCE_DTYPE (transformers always runs "
                             "the exact model in the auto dtype)")
    parser.add_argument("--tokens", type=int, default=NEW_TOKENS, help="new tokens each")
    parser.add_argument("--clients", type=int, default=len(QUESTIONS),
                        help="concurrent streaming clients in (b), (c)")
    parser.add_argument("--adapters", type=int, default=20,
                        help="LoRA adapters in (d); 0 skips (d)")
    parser.add_argument("--memory-only", action="store_true",
                        help=argparse.SUPPRESS)  # (d)'s own process: see part_d
    args = parser.parse_args()
    NEW_TOKENS = args.tokens
    torch.set_num_threads(os.cpu_count() or 2)
    if args.memory_only:
        catalog = Catalog(Settings(home=args.home))
        print(json.dumps(measure_memory(catalog, args.dtype, args.adapters)))
        return
    print(describe_machine(), flush=True)
    os.environ["GPTSTORE_HOME"] = str(args.home)
    settings = Settings(home=args.home)
    catalog = Catalog(settings)
    ensure_builtin(catalog)
    tokenizer = load_tokenizer(catalog, BUILTIN_NAME)
    prompts = [render_chat_prompt(tokenizer, [{"role": "user", "content": q}])
               for q in QUESTIONS[:args.clients]]
    print(f"SmolLM2-135M-Instruct, gptstore {args.dtype} (auto: "
          f"{str(preferred_dtype(settings)).removeprefix('torch.')}), "
          f"{NEW_TOKENS} new tokens, {torch.get_num_threads()} threads", flush=True)
    a = part_a(catalog, prompts[: args.single_prompts], args.dtype)
    print(f"(a) single stream: gptstore {a['gptstore_tok_s']:.1f} tok/s, transformers "
          f"generate ({a['hf_dtype']}, own process) {a['hf_tok_s']:.1f} tok/s -> "
          f"{a['ratio']:.2f}x", flush=True)
    bc = part_bc(args.home, catalog, prompts, args.dtype)
    print(f"(b) {args.clients} concurrent HTTP streams: "
          f"{bc['gptstore_16_clients_tok_s']:.1f} tok/s, {args.clients} sequential generate: "
          f"{bc['hf_sequential_tok_s']:.1f} tok/s -> "
          f"{bc['ratio']:.2f}x", flush=True)
    # what the machine's own GEMM rate allows (b): each new token is a pass of
    # matrix-vector products over every weight matrix, 2 FLOPs a weight, whatever else
    # the step does; the rate of an ideal 2048^3 product bounds it from above
    rate, dtype = max(zip(gemm_rates(), ("fp32", "bf16"), strict=True))
    layer_flops, head_flops = flops_per_token(catalog)
    flops = layer_flops + head_flops
    ceiling = rate * 1e9 / flops
    print(f"(b) compute ceiling: {flops / 1e6:.0f} MFLOP a token at "
          f"this machine's {dtype} GEMM rate ({rate:.0f} GFLOP/s) is at most {ceiling:.0f} "
          f"tok/s for any number of streams, {ceiling / bc['hf_sequential_tok_s']:.1f}x "
          "sequential generate", flush=True)
    print(f"(c) time to first token under that load: p50 {bc['ttft_p50_s']:.2f} s, "
          f"p95 {bc['ttft_p95_s']:.2f} s", flush=True)
    # what the same rate allows (c): the last client's first token needs every prompt
    # token not found in the prefix cache computed, each a pass over the layers' weights,
    # and each prompt's logits (attention left out: a floor)
    computed = bc["prompt_tokens"] - bc["cached_prompt_tokens"]
    floor = (computed * layer_flops + args.clients * head_flops) / (rate * 1e9)
    print(f"(c) compute floor: {bc['prompt_tokens']} prompt tokens, "
          f"{bc['cached_prompt_tokens']} of them from the prefix cache; the other "
          f"{computed} take at least {floor:.2f} s at that GEMM rate before the last "
          f"client's first token", flush=True)
    d: dict[str, float] = {}
    if args.adapters:  # --adapters 0 skips (d)
        d = part_d(args.home, catalog, args.dtype, args.adapters)
        print(f"(d) resident memory: base {d['rss_base_mb']:.0f} MB, base + {args.adapters} "
              f"adapters {d['rss_base_plus_adapters_mb']:.0f} MB; adapter files "
              f"{d['adapter_files_mb']:.1f} MB -> growth {d['rss_growth_over_files']:.2f}x "
              f"their size (the engine counts {d['adapter_tensors_mb']:.1f} MB of adapter "
              "tensors)", flush=True)
    json.dump({"a": a, "bc": {**bc, "compute_ceiling_tok_s": ceiling,
                              "ttft_compute_floor_s": floor}, "d": d}, sys.stdout)
    print()
    catalog.close()


if __name__ == "__main__":
    main()
