"""What every benchmark prints first: the machine it ran on, measured.

A ratio means little without the machine's own limits beside it: the CPU model, the
GEMM speed in fp32 and bf16 (whether bf16 pays here is what decides gptstore's
precision, docs/design.md "Precision by measurement"), the memory read bandwidth (the
ceiling of single-stream decoding: bandwidth / bytes per token), and how busy the
machine was. `describe_machine()` measures all of it in a few seconds, fresh (not the
cached profile), with the torch threads the benchmark will use.

`OtherLoad` reports the share of the CPU that processes *outside* this benchmark's own
process tree used, so peers run in child processes count as ours.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import torch

from gptstore.inference.precision import (
    BANDWIDTH_BYTES,
    SHAPES,
    MachineProfile,
    attention_text,
    cpu_flags,
    cpu_model,
    gemv_rates_text,
    read_bandwidth,
    rows_loop_text,
)
from gptstore.inference.precision import measure as measure_profile

GEMM_SIZE = 2048
#: seconds one timed product may take before the GEMM is measured at a smaller size
GEMM_SLOW_S = 1.0
#: the profile the last `describe_machine` measured (what its lines show), for a script
#: that reads its own figures against them
_measured: list[MachineProfile] = []
#: the GEMM GFLOP/s (fp32, bf16) behind those lines
_gemm: list[tuple[float, float]] = []


def gemm_gflops(dtype: torch.dtype, n: int = GEMM_SIZE, reps: int = 3) -> tuple[float, int]:
    """Best of `reps` n x n x n matmuls in `dtype`, in GFLOP/s, and the n used: smaller
    where one product of a quarter of the size already takes over `GEMM_SLOW_S` (bf16
    on an AVX2-only CPU runs ~1 GFLOP/s, and 2048^3 would take a minute a product)."""
    size = 256
    while size < n:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        start = time.perf_counter()
        torch.mm(a, b)
        if (time.perf_counter() - start) * 8 > GEMM_SLOW_S:  # the doubled size's time
            break
        size *= 2
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9, size


def describe_machine() -> str:
    """Several lines: CPU, threads, GEMM GFLOP/s in both dtypes at 2048^3 and at the shapes
    gptstore times, memory read bandwidth, load average.

    Measured on a short-lived thread with the caller's torch threads: libgomp keeps one
    team of worker threads per thread that ran a parallel region, and once the teams
    outnumber the cores every parallel region pays a wake-up (docs/design.md,
    "Threads"). Measured on the main thread, this line slowed the engine measured after
    it in the same process: a SmolLM2 single stream decoded at 20 tok/s instead of 31-38,
    and the engine's thread choice (`step_threads`) saw two threads gain too little."""
    threads = torch.get_num_threads()
    lines: list[str] = []

    def run() -> None:
        torch.set_num_threads(threads)
        lines.append(_describe())

    worker = threading.Thread(target=run, name="describe-machine")
    worker.start()
    worker.join()
    if not lines:
        raise RuntimeError("measuring the machine failed (see the thread's traceback above)")
    return lines[0]


def measured_profile() -> MachineProfile:
    """The profile behind the lines `describe_machine` returned last (its per-use GFLOP/s
    are one thread's)."""
    if not _measured:
        raise RuntimeError("describe_machine() has not run in this process")
    return _measured[0]


def projection_weights(folder: Path) -> tuple[int, int, dict]:
    """The weights of one decoder layer's projections (q, k, v, o; gate, up, down) of a
    Llama-style model folder, its layer count, and its config.json: the matrices every
    token is multiplied by, for the scripts' FLOP counts."""
    config = json.loads((folder / "config.json").read_text())
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    per_layer = hidden * (heads * head_dim + 2 * kv) + heads * head_dim * hidden \
        + 3 * hidden * int(config["intermediate_size"])
    return per_layer, int(config["num_hidden_layers"]), config


def gemm_rates() -> tuple[float, float]:
    """The fp32 and bf16 GEMM GFLOP/s of the lines `describe_machine` returned last."""
    if not _gemm:
        raise RuntimeError("describe_machine() has not run in this process")
    return _gemm[0]


def bandwidth_now() -> float:
    """`read_bandwidth` now, on a short-lived thread (as `describe_machine`, for the same
    reason). On the 2-core hosts here the reading moves between ~28 and ~58 GB/s from
    minute to minute (the memory is shared with other machines), so a ceiling is taken
    from the reading next to what it bounds, not from one taken minutes before."""
    readings: list[float] = []
    worker = threading.Thread(target=lambda: readings.append(read_bandwidth()),
                              name="bandwidth")
    worker.start()
    worker.join()
    if not readings:
        raise RuntimeError("reading the memory bandwidth failed (see the traceback above)")
    return readings[0]


def _describe() -> str:
    load = os.getloadavg()[0]
    with torch.no_grad():
        (fp32, n32), (bf16, n16) = gemm_gflops(torch.float32), gemm_gflops(torch.bfloat16)
    _gemm[:] = [(fp32, bf16)]
    profile = measure_profile()
    _measured[:] = [profile]
    bandwidth = read_bandwidth()
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
             f"with {torch.get_num_threads()} threads; flags: {' '.join(cpu_flags())}",
             f"  GEMM: fp32 {fp32:.0f} GFLOP/s ({n32}^3), bf16 {bf16:.0f} GFLOP/s ({n16}^3) "
             f"({bf16 / fp32:.2f}x)"]
    for use, (rows, n_in, n_out) in SHAPES.items():
        rates = profile.gflops[use]
        kernels = gemv_rates_text(profile) if use == "decode" else None
        kernels = f" (bf16 kernels: {kernels})" if kernels else ""
        lines.append(f"  {use} {rows} x {n_in} -> {n_out}: fp32 {rates['fp32']:.1f}, "
                     f"bf16 {rates['bf16']:.1f} GFLOP/s{kernels} -> gptstore picks "
                     f"{profile.choice(use)}")
    loop = rows_loop_text(profile)
    if loop:
        lines.append(f"  bf16 products of several rows: {loop}")
    attention = attention_text(profile)
    if attention:
        lines.append(f"  decode attention {attention}")
    lines.append(f"  memory read {bandwidth:.1f} GB/s (sum over {BANDWIDTH_BYTES >> 20} MiB); "
                 f"load average {load:.2f} before measuring, "
                 f"{os.getloadavg()[0]:.2f} after")
    return "\n".join(lines)


class OtherLoad:
    """Share of the machine's CPU used since the last call by processes outside this
    process's tree (/proc). On a shared 2-core machine a figure measured next to a busy
    neighbour is not a measurement of us or of the peer."""

    def __init__(self) -> None:
        self._last = self._snapshot()

    def _snapshot(self) -> tuple[int, int, int]:
        cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        parents: dict[int, tuple[int, int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                # utime + stime, and cutime + cstime: a child that ended (a peer, a
                # finished command, a job's process under a server) moved its time into
                # its parent's counters; a live one is counted on its own, never twice
                ticks = sum(int(v) for v in stat[11:15])
                parents[int(entry.name)] = (int(stat[1]), ticks)
        tree, changed = {os.getpid()}, True
        while changed:
            changed = False
            for pid, (parent, _ticks) in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        ours = sum(parents[pid][1] for pid in tree if pid in parents)
        return sum(cpu), sum(cpu) - cpu[3] - cpu[4], ours

    def __call__(self) -> float:
        now, last = self._snapshot(), self._last
        self._last = now
        total, busy, ours = (a - b for a, b in zip(now, last, strict=True))
        return max(0.0, (busy - ours) / max(1, total))


if __name__ == "__main__":
    print(describe_machine())
