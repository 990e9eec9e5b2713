"""Single-stream int4 decoding: gptstore's int4 engine vs llama.cpp on the same Q4_1 GGUF,
on one machine, in one run (issue 13's int4 row: target >= 1x).

    .venv/bin/python benchmarks/int4_vs_llamacpp.py [--home /tmp/gptstore-bench]

The peer is llama.cpp as its Python users run it: llama-cpp-python, built from source for
this CPU in a virtual environment of its own (`--peer-venv`, made on the first run: a
few minutes of compiling; never a dependency of gptstore), on the GGUF that gptstore's
built-in model comes from (SmolLM2-135M-Instruct.Q4_1.gguf), in its own process on its
main thread (benchmarks/peer_llamacpp.py), at gptstore's thread count. gptstore runs
`GPTSTORE_INFERENCE_DTYPE=int4`: the same Q4_1 grid recovered exactly from the
dequantised weights, bf16 activations (docs/design.md, "int4"). Both get the same chat
prompts as token ids and decode 128 tokens greedily whatever they are; the rate is new
tokens per second after the first. Rounds alternate the two, and the engine is shut
down while the peer runs. Prints the machine first, and the bandwidth ceiling of the
GGUF's bytes per token beside the peer's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import venv
from pathlib import Path

import torch
from engine_decode import engine_single, load, prompts
from finetune_vs_hf import open_store
from machine import OtherLoad, bandwidth_now, describe_machine

from gptstore.catalog.importers import builtin_gguf_path
from gptstore.inference import Engine, EngineConfig, ModelSpec
from gptstore.inference.loader import load_tokenizer
from gptstore.inference.precision import (
    cpu_flag_set,
    int4_profile,
    machine_profile,
)
from gptstore.inference.types import INT4_KERNELS

HERE = Path(__file__).resolve().parent
LLAMA_CPP_VERSION = "0.3.36"
#: /proc/cpuinfo flag -> the ggml build option of that instruction set. The build is not
#: `GGML_NATIVE`: on an AMX Sapphire Rapids the native build died with "Illegal
#: instruction" (../shared/NOTES.md), so the sets are named from what this CPU reports.
#: Not AMX: built with ggml's AMX options on an AMX Sapphire Rapids VM (2026-12-06), the
#: peer died with SIGILL on its first token; a user there builds without them.
GGML_FLAGS = {
    "avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
    "avx512f": "GGML_AVX512", "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16",
}


def cmake_args() -> str:
    present = cpu_flag_set()
    on = [f"-D{option}=ON" for flag, option in GGML_FLAGS.items() if flag in present]
    return " ".join(["-DGGML_NATIVE=OFF", *on])


def peer_python(peer_venv: Path) -> Path:
    """The peer venv's interpreter, with llama-cpp-python built for this CPU (built on
    the first call; the flags it was built with are kept beside it and checked, so a
    venv carried to another kind of CPU is rebuilt)."""
    python = peer_venv / "bin" / "python"
    stamp = peer_venv / "gptstore-build.json"
    wanted = {"version": LLAMA_CPP_VERSION, "cmake_args": cmake_args()}
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    print(f"building llama-cpp-python {LLAMA_CPP_VERSION} into {peer_venv} for this CPU "
          f"({wanted['cmake_args']}); a few minutes, first run only...", flush=True)
    started = time.perf_counter()
    venv.create(peer_venv, with_pip=True, clear=True)
    env = {**os.environ, "CMAKE_ARGS": wanted["cmake_args"]}
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                           "--no-cache-dir", f"llama-cpp-python=={LLAMA_CPP_VERSION}"],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building llama-cpp-python failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    stamp.write_text(json.dumps(wanted))
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    return python


def run_llamacpp(python: Path, gguf: Path, batch: list[list[int]], tokens: int,
                 threads: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(batch, handle)
        handle.flush()
        proc = subprocess.run([str(python), str(HERE / "peer_llamacpp.py"), str(gguf),
                               handle.name, "--tokens", str(tokens), "--threads",
                               str(threads)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp peer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-bench"))
    parser.add_argument("--peer-venv", type=Path, default=None,
                        help="llama-cpp-python's own venv (default: HOME/llama-cpp-venv)")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-prompts", type=int, default=2,
                        help="prompts the peer runs per round (its median counts)")
    parser.add_argument("--int4-kernel", choices=INT4_KERNELS, default=None,
                        help="gptstore's 4-bit kernel: torch, native (1-2 row steps) or "
                             "native-all (every step); default: as measured here "
                             "(`gptstore doctor`)")
    args = parser.parse_args()

    print(describe_machine(), flush=True)
    python = peer_python(args.peer_venv or args.home / "llama-cpp-venv")
    settings, catalog, base = open_store(args.home)
    profile = machine_profile(settings.home)
    folder = catalog.snapshot(base)
    gguf = builtin_gguf_path()
    batch = prompts(load_tokenizer(catalog, base), 16)
    threads = torch.get_num_threads()
    spec = ModelSpec(base_key="m", base_loader=lambda: load(folder, torch.bfloat16))
    int4_kernel = args.int4_kernel or int4_profile(settings.home).int4_gemv
    print(f"{gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB): llama.cpp vs gptstore int4 "
          f"(int4 kernel {int4_kernel}), {threads} threads each, {args.tokens} new tokens",
          flush=True)

    peer_rates: list[float] = []
    our_rates: list[float] = []
    other = OtherLoad()
    version = "?"
    for r in range(args.rounds):
        other()
        peer = run_llamacpp(python, gguf, batch[r:r + args.peer_prompts], args.tokens, threads)
        version = peer["version"]
        peer_rates.append(statistics.median(run["decode_tok_s"] for run in peer["runs"]))
        peer_other = other()
        # the kernels the product picks here: 1-row products, decode attention
        engine = Engine(lambda _name: spec, EngineConfig(
            quantize="int4", num_threads=threads, gemv=profile.gemv,
            decode_attention=profile.attention, int4_gemv=int4_kernel))
        engine.tokenizer("m")  # load
        engine_single(engine, batch[0][:8], 4)  # warm-up
        our_rates.append(engine_single(engine, batch[r % len(batch)], args.tokens))
        engine.shutdown()
        print(f"round {r + 1}: llama.cpp {peer_rates[-1]:6.1f} tok/s | gptstore int4 "
              f"{our_rates[-1]:6.1f} tok/s | other processes' CPU: {peer_other:.0%} (peer), "
              f"{other():.0%} (gptstore)", flush=True)

    ceiling = bandwidth_now() * 1e9 / gguf.stat().st_size
    for label, pick in (("best", max), ("median", statistics.median)):
        ours, theirs = pick(our_rates), pick(peer_rates)
        print(f"{label:6s}: gptstore int4 {ours:.1f} vs llama.cpp {theirs:.1f} tok/s = "
              f"{ours / theirs:.2f}x (the GGUF's bytes per token at this memory bandwidth: "
              f"{ceiling:.0f} tok/s)")
    print(f"llama-cpp-python {version}, built with {cmake_args()}")
    catalog.close()


if __name__ == "__main__":
    main()
