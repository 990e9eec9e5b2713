"""Precision by measurement: whether bf16 pays on this CPU, timed once per machine.

The rule it replaces read a CPU flag (`amx_bf16`), and the flags do not predict the
answer. Measured with torch 2.13 on 2 threads (docs/design.md, "Precision by
measurement"): on an AMD EPYC without AMX, bf16 GEMMs ran 4.8x fp32; on a Sapphire
Rapids VM with `avx512_bf16` but no AMX they ran at half fp32's speed. So the first
time a machine is used, `machine_profile` times the shapes that matter, in both dtypes
alternating, on one thread (`MEASURE_THREADS`), in well under a second:

- *training*: a micro-batch's projection, 512 x 576 -> 1536 (what autocast runs);
- *batched*: a 16-row serving step over a few projections, through the engine's own
  `Linear` (oneDNN-packed weights, as the engine serves them);
- *decode*: a 1-row step over a model-sized set of projections (larger than the L3
  cache, as a real model's weights are), through the same `Linear`: single-stream
  decoding is a pass over all the weights per token, so its speed is bytes read, not
  arithmetic. bf16 is timed in every kernel the engine has for it here: ATen's GEMV,
  oneDNN on packed weights (where oneDNN can pack bf16) and gptstore's own (native.py,
  where the CPU has AVX2 and a C compiler is found; its AVX-512 path as a kernel of its
  own where the CPU has AVX-512), and the fastest is the profile's
  `gemv` (which kernel wins differs between CPUs: models/base.py, `Linear`);
- *int4* (not part of the first-use timing: measured by `int4_profile` the first time
  int4 is served, or by `gptstore doctor`, then cached with the rest): decode steps of
  1 and 16 rows with 4-bit weights (`GPTSTORE_INFERENCE_DTYPE=int4`), in PyTorch's int4
  kernel and in gptstore's own (native.py `gemv_q4`, where it builds); the profile's
  `int4_gemv` says which serves which (`int4_kernel`);
- *rows loop*: where the native GEMV serves and the CPU has both AVX-512 and its bf16
  dot product, a 16-row bf16 product over the decode set of weights in each of the
  kernel's loops for several rows (`vdpbf16ps`, or FMAs on widened weights: the same
  bits); the faster is the profile's `rows_loop`;
- *steps of a few rows*: where the native GEMV is the 1-row kernel, decode steps of 16,
  8 and 4 rows of a small Llama on it (with that loop) against the batched products,
  and where it wins 16 rows on bf16 weights a 64-token prompt as well: the profile's
  `gemv_rows`, up to every step (`_time_gemv_rows`);
- *attention*: decode rows' attention over the KV cache, a 1-row and a 16-row group
  (`ATTENTION_SHAPE`) in the served dtype, as the runner calls PyTorch's SDPA (with
  its cache writes) and gptstore's own kernel (native.py), where that builds; the faster
  is the profile's `attention`;
- memory read bandwidth (`read_bandwidth`, a sum over 256 MiB) is not part of the
  first-use timing (it alone takes ~0.3 s); `gptstore doctor` and the benchmarks
  measure it when they print the machine, as the decode ceiling's numerator.

The result is cached as JSON in the store home (`precision.json`), keyed by the CPU
model string, its kernel flags, the usable CPUs and the torch version (`machine_key`),
written atomically (temp file, then rename), and
kept in memory for the process. A measurement taken while the machine was busy (load
average above its cores) serves this process but is not cached: the next process
measures again. A use picks bf16 only where it measured at least `BF16_MARGIN` times
fp32's speed. Explicit settings win over all of it: the training config's `precision`,
and `GPTSTORE_INFERENCE_DTYPE` for serving.

The same way, `step_threads` decides whether a model's serving steps are big enough to
split over the intra-op threads: a small model's matmuls run no faster on two threads,
and the second one spins between ops on the core the HTTP server needs.

Knows nothing of models, the store's catalog or HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptstore.inference.cpu import cpu_flag_set, cpu_model
from gptstore.inference.types import (
    ATTENTION_NATIVE,
    ATTENTION_SDPA,
    GEMV_ATEN,
    GEMV_DECODE_ROWS,
    GEMV_KERNELS,
    GEMV_NATIVE,
    GEMV_NATIVE_AVX512,
    GEMV_ONEDNN,
    GEMV_ROWS_ALL,
    INT4_NATIVE,
    INT4_NATIVE_ALL,
    INT4_TORCH,
    ROWS_AMX,
    ROWS_DOT,
    ROWS_FMA,
)

Use = Literal["training", "batched", "decode"]
Precision = Literal["bf16", "fp32"]
USES: tuple[Use, ...] = ("training", "batched", "decode")

#: file in the store home holding one profile per machine key
CACHE_FILE = "precision.json"
#: bf16 must beat fp32 by this factor to be chosen: it rounds (exactness has a price),
#: and a measurement within ~10% of a tie is noise on a shared machine
BF16_MARGIN = 1.15
#: (rows, in, out) of each use's timed matmul: SmolLM2-135M's hidden size and MLP width
SHAPES: dict[Use, tuple[int, int, int]] = {
    "training": (512, 576, 1536),
    "batched": (16, 576, 1536),
    "decode": (1, 576, 1536),
}
#: projections per timed pass: one for training (compute-bound), a few for batched
#: steps, and for decoding enough that fp32 (85 MB) and bf16 (42 MB) weights both
#: overflow a 32 MiB L3
COPIES: dict[Use, int] = {"training": 1, "batched": 4, "decode": 24}
#: seconds spent timing each (use, dtype) pair after its warm-up, and the most it may
#: take when single passes are slow (a busy machine)
TIME_BUDGET_S = 0.03
TIME_CAP_S = 0.25
#: bytes summed to estimate memory read bandwidth: 64 MiB still measured 86 GB/s on a
#: VM reporting a 32 MiB L3 (the host's caches are larger); 256 MiB gave 36 GB/s
BANDWIDTH_BYTES = 256 * 1024**2
#: (query heads, kv heads, head_dim, cached positions) of the timed decode attention:
#: SmolLM2-135M's heads at a chat's length; its groups have these many rows
ATTENTION_SHAPE = (9, 3, 64, 256)
ATTENTION_ROWS = (1, 16)
#: layout of a cached profile; one of an older layout is measured again (3: the native
#: GEMV joined the timed 1-row kernels, and decode attention is timed; 4: it has room for
#: the 4-bit kernels' times; 5: the native GEMV's AVX-512 path is timed as a kernel; 6: the
#: rows of decode steps the native GEMV serves are timed; 7: the native kernels' source
#: digest is kept, and a profile measured with other kernels is measured again; 8: those
#: rows are timed as whole decode steps of a runner; 9: the loop of those steps'
#: products is timed, and a prompt chunk where native won the most rows timed; 10: AMX
#: joined the loops timed, and a long prompt chunk is timed after a short one; the int4
#: kernels are timed as decode steps; 11: prompt chunks are timed where fp32 is served
#: with a bf16 copy too, and a 32-token chunk first; 12: the longest chunk is timed on
#: `LONG_CHUNK_LAYERS` layers)
LAYOUT = 12
#: rows of the decode steps timed for `MachineProfile.gemv_rows`, most first
GEMV_ROWS_TIMED = (GEMV_DECODE_ROWS, 8, 4)
#: the Llama whose decode steps `_time_gemv_rows` times: SmolLM2-135M's layer shapes, a
#: few layers (their weights, ~40 MB in bf16, are more than the L3 caches seen hold, as
#: a model's are), a small vocabulary (the head is not what is compared)
ROWS_MODEL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
              "num_key_value_heads": 3, "num_hidden_layers": 6, "vocab_size": 256,
              "max_position_embeddings": 640, "tie_word_embeddings": True}
#: tokens in each timed row's cache before its step (16: the 16 slots' prefill is the
#: timing's largest fixed cost, 0.3 s a runner with 32 on an AVX2-only EPYC, one thread;
#: the steps' attention over them is a small part of a step either way)
ROWS_PROMPT = 16
#: tokens of the prompt chunks timed, shortest first, where the native GEMV won the most
#: rows timed. 32: where native wins a 32-token chunk but not a 64-token one (an AVX2-only
#: EPYC serving fp32, one thread: 23.1 against 24.0 ms, 46.4 against 42.0), a chunk beside
#: 15 decoding rows still stays on it (pacing.py `fast_rows`)
PREFILL_TOKENS_TIMED = (32, 64, 512)
#: layers of the runners that time the longest prompt chunk: 512 rows are compute-bound
#: on every machine seen, so two layers compare the same rates as six in a third of the
#: time (on an AVX2-only EPYC the six-layer chunk was 1.47 s of a 4.1 s profile, and CI
#: measured the profile at 3.7 s against its test's 3 s)
LONG_CHUNK_LAYERS = 2
#: the longest chunk is timed only where native beat the batched products on the chunk
#: before it by this factor: native's lead shrank with the rows on every machine seen
#: (an AVX2-only EPYC, six profiles: 32 tokens 0.82-0.94x the batched time, 64 tokens
#: 0.97-1.29x, 512 tokens 1.03-1.18x; an AMX VM: 64 rows 0.85x, 512 2x; an Intel Xeon
#: without AMX: 64 rows 0.87x, 512 0.82x, where native serves every step)
LONG_CHUNK_MARGIN = 1.1
#: one round of a use's timing is enough where the dtypes' times differ this much
DECIDED_RATIO = 4.0
#: torch threads of the timing. One: the choice needs the ratio of the two dtypes, and
#: multi-threaded kernels on a machine shared with other processes stall on their
#: barriers (2 threads at load average 8 on 2 cores: 1.4 GFLOP/s for a 16-row fp32 step
#: that runs at 300 on a quiet machine), where one thread keeps measuring the hardware
MEASURE_THREADS = 1


def _kernels_digest() -> str:
    """The native kernels' source digest (`native.source_digest`)."""
    from gptstore.inference import native

    return native.source_digest()


@dataclass(frozen=True)
class MachineProfile:
    """What was measured on one machine, and the precision chosen per use."""

    key: str  # "<cpu model> | torch <version>"
    cpu: str
    torch: str
    threads: int
    flags: list[str]  # the CPU flags that bear on bf16 (shown, not used to decide)
    gflops: dict[str, dict[str, float]]  # use -> {"fp32": GFLOP/s, "bf16": GFLOP/s}
    choices: dict[str, str]  # use -> "bf16" | "fp32"
    # kernel of bf16 1-2 row products that measured fastest: "aten" (its GEMV), "onednn"
    # (packed weights) or "native" (native.py); gflops["decode"] has each one timed as
    # "bf16_<kernel>"
    gemv: str = GEMV_ATEN
    # the most rows of a decode step the native GEMV serves (where `gemv` is native): 2,
    # or the most of `GEMV_ROWS_TIMED` at which it measured at least as fast as the
    # batched products of the served dtype, or `GEMV_ROWS_ALL` (every step) where a
    # prompt chunk did too; and the microseconds timed ("native_<rows>",
    # "batched_<rows>", "native_prompt_<tokens>", "batched_prompt_<tokens>")
    gemv_rows: int = 2
    gemv_rows_us: dict[str, float] = field(default_factory=dict)
    # the native GEMV's loop for steps of two or more bf16 rows on an AVX-512 CPU:
    # "bf16-dot" or "fma" (gemv_bf16.c), the one measured faster where the CPU has both
    # ("fma" where it lacks the dot product); and the microseconds timed per loop
    rows_loop: str = ROWS_DOT
    rows_loop_us: dict[str, float] = field(default_factory=dict)
    # kernel of decode rows' attention that measured faster, "sdpa" or "native", and
    # the microseconds of a 1-row plus a 16-row group in each kernel timed
    attention: str = ATTENTION_SDPA
    attention_us: dict[str, float] = field(default_factory=dict)
    # kernel of 4-bit products as measured: "torch", "native" (1-2 row steps) or
    # "native-all" (every step), and the microseconds of the decode pass ("torch",
    # "native") and the batched pass ("torch_batched", "native_batched") with 4-bit
    # weights in each kernel timed; empty until `int4_profile` measures them
    int4_gemv: str = INT4_TORCH
    int4_us: dict[str, float] = field(default_factory=dict)
    load_average: float = 0.0  # 1-minute load average when measured
    measured_at: float = field(default_factory=time.time)
    seconds: float = 0.0  # how long the measurement took
    # the native kernels measured (`native.source_digest`): a new build of them changes
    # what they cost, so a profile of other kernels is measured again
    kernels: str = field(default_factory=_kernels_digest)
    layout: int = LAYOUT

    @property
    def quiet(self) -> bool:
        """Whether the machine was not oversubscribed while this was measured."""
        return self.load_average < (os.cpu_count() or 1)

    def choice(self, use: Use) -> Precision:
        value = self.choices.get(use, "fp32")
        return "bf16" if value == "bf16" else "fp32"

    @property
    def serving(self) -> Precision:
        """The weights dtype of served models: one per base, so one choice for both
        serving shapes. Where they agree, that; where they differ, the dtype whose one
        1-row step plus one 16-row step takes less time (each shape weighed by what it
        costs, not counted once each)."""
        batched, decode = self.choice("batched"), self.choice("decode")
        if batched == decode:
            return batched

        def step_time(dtype: str) -> float:
            total = 0.0
            serving_uses: tuple[Use, ...] = ("batched", "decode")
            for use in serving_uses:
                rows, n_in, n_out = SHAPES[use]
                rate = self.gflops[use][dtype]
                total += 2 * rows * n_in * n_out / max(rate, 1e-9)
            return total

        return "bf16" if step_time("bf16") < step_time("fp32") else "fp32"

    @property
    def decode_copy(self) -> bool:
        """Whether fp32-served models keep a bf16 copy of their projections for 1-2 row
        steps: where fp32 serves batches best but bf16 measured faster for one row (an
        AVX2-only CPU: bf16 GEMV reads half the bytes; bf16 batches have no bf16 FMA)."""
        return self.serving == "fp32" and self.choice("decode") == "bf16"

    @property
    def serving_dtype_name(self) -> str:
        """"bfloat16" or "float32": the weights dtype served models load in by default."""
        return "bfloat16" if self.serving == "bf16" else "float32"

    @property
    def decode_dtype_name(self) -> str | None:
        """"bfloat16" where fp32-served models keep a bf16 decode copy, else None."""
        return "bfloat16" if self.decode_copy else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MachineProfile:
        """Raises ValueError for a profile of another layout (measured again)."""
        if doc.get("layout") != LAYOUT:
            raise ValueError(f"profile layout {doc.get('layout')!r}, not {LAYOUT}")
        if doc.get("kernels") != _kernels_digest():
            raise ValueError("profile measured with other native kernels")
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


# ------------------------------------------------------------------------ machine key


def cpu_flags() -> list[str]:
    """The flags of `/proc/cpuinfo` that bear on the kernels' speed (shown by `gptstore
    doctor`, and part of `machine_key`)."""
    present = cpu_flag_set()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
              "amx_bf16", "amx_tile", "amx_int8")
    return [f for f in wanted if f in present]


def machine_key() -> str:
    """What a profile measured here holds for: the CPU's model name, the flags that bear
    on its kernels, the CPUs this process may use, and the torch version. Not the name
    alone: virtual machines of different CPUs report the same one (an AVX2-only EPYC
    and an AVX-512 one both say "AMD EPYC" here), and a home may move between them or
    to a machine with more cores; a profile taken on the wrong one picks kernels that
    are slower, bf16 training where bf16 has no arithmetic at worst."""
    import torch

    flags = " ".join(cpu_flags()) or "none of the listed flags"
    return f"{cpu_model()} | {flags} | {usable_cpus()} CPUs | torch {torch.__version__}"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ------------------------------------------------------------------------ measuring


def _best_time(fn: Callable[[], object], budget_s: float = TIME_BUDGET_S,
               min_reps: int = 3, cap_s: float = TIME_CAP_S) -> float:
    """Best wall time of `fn` after one warm-up call, over `budget_s` (at least
    `min_reps` runs unless that passes `cap_s`): the minimum is the figure least moved
    by other processes."""
    fn()
    best, reps, start = float("inf"), 0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
        spent = time.perf_counter() - start
        if (reps >= min_reps and spent >= budget_s) or spent >= cap_s:
            return best


#: more intra-op threads must run a serving step's projections this many times faster
#: than one thread, or a model's steps run on one (`step_threads`)
THREADS_MARGIN = 1.1
#: seconds spent timing each thread count in `step_threads`, each of three times
THREADS_BUDGET_S = 0.02
#: distinct weights in `step_threads`' timed step
THREADS_WEIGHTS = 4


def step_threads(rows: int, n_in: int, n_out: int, dtype: Any, threads: int, *,
                 decode_dtype: Any = None, pack: bool = True, gemv: str = GEMV_ATEN) -> int:
    """The intra-op threads for serving steps whose projections are `rows` x `n_in` ->
    `n_out` in `dtype`: `threads`, or 1 where `threads` measured under `THREADS_MARGIN`
    times one thread's speed. Measured, because the answer depends on the model's size
    and the CPU: SmolLM2-135M's 16-row projections split well over two cores; a tiny
    model's do not, and then OpenMP's idle worker spins between ops on a core the
    HTTP server needs (on a 2-core machine, half a core: a flooded server's time to
    first token doubled with it, benchmarks/fair_admission.py).

    Timed as the engine runs its steps: through `Linear` (packed weights when `pack`,
    the decode copy in `decode_dtype` for the 1-row pass, its `gemv` kernel), a
    `rows`-row pass plus a 1-row pass, over a few weights, thread counts alternating
    three times. On an AVX2 EPYC, SmolLM2's shapes measured 1.2-1.9x on two threads
    from run to run, and a choice of one thread (a plain `mm` of one weight under the
    former 1.25 margin, after other measurements in the same process) decoded at
    23 tok/s instead of 27-32 for as long as the base stayed loaded; a tiny model's
    steps measure under 1x.
    (Timing 64 MiB of weights instead measured 1.06x there, while the engine's real
    steps gained 1.2-1.4x: the second core's gain lies in more than the matmuls.)"""
    import torch

    from gptstore.inference.models.base import Linear

    if threads <= 1:
        return threads
    generator = torch.Generator().manual_seed(0)
    linears = [Linear.of(torch.randn(n_out, n_in, generator=generator).to(dtype), pack=pack,
                         decode_dtype=decode_dtype, gemv=gemv)
               for _ in range(THREADS_WEIGHTS)]
    batch = torch.randn(rows, n_in, generator=generator).to(dtype)
    single = batch[:1].clone()

    def step() -> None:
        for linear in linears:
            linear(batch)
            linear(single)

    before = torch.get_num_threads()
    try:
        times: dict[int, float] = {}
        with torch.inference_mode():
            for n in (1, threads) * 3:  # alternating: a disturbance hits both
                torch.set_num_threads(n)
                took = _best_time(step, budget_s=THREADS_BUDGET_S, cap_s=THREADS_BUDGET_S * 4)
                times[n] = min(times.get(n, took), took)
    finally:
        torch.set_num_threads(before)
    return threads if times[1] >= THREADS_MARGIN * times[threads] else 1


def _pass(use: Use, dtype: Any, gemv: str = GEMV_ATEN) -> Callable[[], object]:
    """One timed pass of `use`'s shape in `dtype`, run the way that use runs it (1-row
    bf16 products in the `gemv` kernel)."""
    import torch
    import torch.nn.functional as F

    from gptstore.inference.models.base import Linear, _mkldnn_off

    rows, n_in, n_out = SHAPES[use]
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(n_out, n_in, generator=generator).to(dtype)
    x = torch.randn(rows, n_in, generator=generator).to(dtype)
    if use == "training":
        def train_pass() -> object:  # autocast's matmul: bf16 frozen weights and inputs
            return F.linear(x, weight)

        return train_pass
    # distinct copies, so the pass reads them from memory as a model's layers are
    weights = [weight] + [weight.clone() for _ in range(COPIES[use] - 1)]
    packed_gemv = gemv == GEMV_ONEDNN
    linears = [Linear.of(w, pack=use == "batched" or packed_gemv, gemv=gemv)
               for w in weights]
    off = dtype == torch.bfloat16 and rows <= 2 and torch.backends.mkldnn.is_available() \
        and not packed_gemv

    def serve_pass() -> object:
        with _mkldnn_off(off):  # the engine's ATen GEMV path for 1-2 bf16 rows
            for linear in linears:
                linear(x)
        return None

    return serve_pass


def decode_kernels() -> list[str]:
    """The kernels of bf16 1-row products this machine can run: ATen's GEMV always,
    oneDNN where it can pack bf16 weights, the native one where it builds here (and its
    AVX-512 path where the CPU has AVX-512)."""
    import torch

    from gptstore.inference import native
    from gptstore.inference.models.base import can_pack

    kernels = [GEMV_ATEN]
    if can_pack(torch.bfloat16):
        kernels.append(GEMV_ONEDNN)
    if native.library() is not None:
        kernels.append(GEMV_NATIVE)
        if native.gemv_avx512_supported():
            kernels.append(GEMV_NATIVE_AVX512)
    return kernels


def _alternating_best(passes: dict[str, Callable[[], object]], *, min_reps: int,
                      budget_s: float, cap_s: float,
                      decided: float | None = None) -> dict[str, float]:
    """Best seconds of each pass: one warm-up call each (oneDNN builds its kernels on
    the first), then the passes in turn, so a burst of load from other processes hits
    all alike instead of deciding the comparison; at least `min_reps` rounds and
    `budget_s`, at most `cap_s`. With `decided`, one round is enough where every pass
    but the fastest took at least `decided` times its time (the order is clear): a bf16
    training matmul on an AVX2-only EPYC takes ~9x fp32's 10 ms, and its two more
    rounds were 0.2 s of the profile."""
    import torch

    best = {name: float("inf") for name in passes}
    with torch.inference_mode():
        for run in passes.values():
            run()
        start, reps = time.perf_counter(), 0
        while True:
            for name, run in passes.items():
                t0 = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - t0)
            reps += 1
            spent = time.perf_counter() - start
            if (reps >= min_reps and spent >= budget_s) or spent >= cap_s:
                return best
            if decided is not None and _clear_order(best, decided):
                return best


def _clear_order(best: dict[str, float], ratio: float) -> bool:
    """Whether each of the times in `best` is the fastest or at least `ratio` x it."""
    fastest = min(best.values())
    return all(t == fastest or t >= ratio * fastest for t in best.values())


def _time_use(use: Use) -> dict[str, float]:
    """GFLOP/s of `use` in fp32 and bf16 (for decode, bf16 in each 1-row kernel this
    machine has, as "bf16_<kernel>", and "bf16" the fastest). The passes alternate, so a
    burst of load from other processes hits all alike instead of deciding the
    comparison."""
    import torch

    passes = {"fp32": _pass(use, torch.float32)}
    kernels = decode_kernels() if use == "decode" else [GEMV_ATEN]
    if len(kernels) > 1:
        for kernel in kernels:
            passes[f"bf16_{kernel}"] = _pass(use, torch.bfloat16, kernel)
    else:
        passes["bf16"] = _pass(use, torch.bfloat16)
    best = _alternating_best(passes, min_reps=3, budget_s=2 * TIME_BUDGET_S,
                             cap_s=2 * TIME_CAP_S, decided=DECIDED_RATIO)
    rows, n_in, n_out = SHAPES[use]
    flops = 2 * rows * n_in * n_out * COPIES[use]
    rates = {name: round(flops / seconds / 1e9, 2) for name, seconds in best.items()}
    if "bf16" not in rates:
        rates["bf16"] = max(rate for name, rate in rates.items() if name.startswith("bf16_"))
    return rates


def gemv_kernel(gflops: dict[str, dict[str, float]]) -> str:
    """The 1-row bf16 kernel that measured fastest ("aten" where only it was timed, or
    on a tie)."""
    decode = gflops.get("decode", {})
    best, best_rate = GEMV_ATEN, decode.get(f"bf16_{GEMV_ATEN}", 0.0)
    for kernel in GEMV_KERNELS:
        rate = decode.get(f"bf16_{kernel}", 0.0)
        if rate > best_rate:
            best, best_rate = kernel, rate
    return best


def _time_rows_loop(profile: MachineProfile) -> tuple[str, dict[str, float]]:
    """The native GEMV's loop for steps of two or more bf16 rows, and the microseconds
    timed: where the profile's 1-row kernel is native and the CPU has AVX-512 with its
    bf16 dot product, the fastest of the loops for a 16-row product over the decode
    set of weights (`SHAPES["batched"]`'s shape, `COPIES["decode"]` distinct weights:
    more than the caches hold, as a model's are), alternating: the dot product, FMAs,
    and AMX tiles where the kernels can use them here (`native.amx_supported`); "fma"
    untimed on an AVX-512 CPU without the dot product (the only loop there), "bf16-dot"
    (unused) elsewhere.

    Why: which is fastest is the CPU's. On an Intel Xeon (family 6 model 207,
    `avx512_bf16`, no AMX) a `vdpbf16ps` issued at a quarter of an FMA's rate, half its
    arithmetic a cycle: 16 rows ran at 226-228 GFLOP/s on the FMAs against 170-175 on
    the dot product (2 threads, a C loop); on a Zen 4 EPYC, whose 512-bit FMAs issue at
    half that rate, the dot product should stay the faster (not yet timed there against
    the FMAs). On an AMX Sapphire Rapids VM, SmolLM2's layer weights at 16 rows took
    13.8 ms on AMX tiles against 24.5 on the FMAs (2 threads, a C loop; gemv_bf16.c)."""
    import torch

    from gptstore.inference import native

    if profile.gemv not in (GEMV_NATIVE, GEMV_NATIVE_AVX512) \
            or not native.gemv_avx512_supported():
        return ROWS_DOT, {}
    if "avx512_bf16" not in cpu_flag_set():
        return ROWS_FMA, {}
    rows = max(GEMV_ROWS_TIMED)
    _, n_in, n_out = SHAPES["batched"]
    generator = torch.Generator().manual_seed(0)
    weights = [native.pack(torch.randn(n_out, n_in, generator=generator))
               for _ in range(COPIES["decode"])]
    x = torch.randn(rows, n_in, generator=generator).to(torch.bfloat16)
    avx512 = profile.gemv == GEMV_NATIVE_AVX512

    def product(loop: str) -> Callable[[], object]:
        return lambda: [native.gemv(x, w, n_out, avx512=avx512, rows_loop=loop)
                        for w in weights]

    loops = [ROWS_DOT, ROWS_FMA] + ([ROWS_AMX] if native.amx_supported() else [])
    best = _alternating_best({loop: product(loop) for loop in loops},
                             min_reps=3, budget_s=TIME_BUDGET_S, cap_s=TIME_CAP_S)
    times = {name: round(seconds * 1e6, 1) for name, seconds in best.items()}
    return min(loops, key=lambda loop: best[loop]), times


def _rows_model(dtype: Any, layers: int | None = None) -> Any:
    """The Llama whose decode steps the profile times (`ROWS_MODEL`: SmolLM2's layer
    shapes; `layers` of them where given), random weights in `dtype`, the same ones each
    time (the caller's random generator does not move). They are bf16 values in either
    dtype, as a bf16 checkpoint's are: an fp32 runner's bf16 copy then serves the steps
    it serves for such a model (models/base.py `Linear`).

    One layer is initialised and the others are copies of it, each in its own memory: a
    step reads every layer's weights from memory all the same, and transformers' random
    initialisation of six layers had been the profile's largest cost that is not a
    timing (0.15 s of a 1.2 s profile on a Zen 5 EPYC, where one layer and five copies
    took 0.03-0.06 s; 0.23-0.41 s on an AVX2-only one, not timed there since)."""
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    count = ROWS_MODEL["num_hidden_layers"] if layers is None else layers
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{**ROWS_MODEL, "num_hidden_layers": 1}))
    stack = model.model.layers
    for index in range(1, count):
        layer = copy.deepcopy(stack[0])
        layer.self_attn.layer_idx = index
        stack.append(layer)
    model.config.num_hidden_layers = count
    return model.to(torch.bfloat16).to(dtype).eval()


def _decode_steps(runner: Any, counts: Sequence[int]) -> dict[int, Callable[[], object]]:
    """`runner` with `max(counts)` slots, each holding a `ROWS_PROMPT`-token prompt, and
    for each count a pass of one decode step of that many rows: the same token at the
    same position each time, so it overwrites its own keys."""
    import torch

    from gptstore.inference.models import RowInput

    prompt = list(range(1, ROWS_PROMPT + 1))
    slots = [runner.allocate() for _ in range(max(counts))]
    with torch.inference_mode():
        runner.forward([RowInput(slot, prompt, 0) for slot in slots])
    steps: dict[int, Callable[[], object]] = {}
    for n in counts:
        rows = [RowInput(slot, [7], ROWS_PROMPT) for slot in slots[:n]]
        steps[n] = lambda rows=rows: runner.forward(rows)
    return steps


def _time_gemv_rows(profile: MachineProfile, attention: str) -> tuple[int, dict[str, float]]:
    """The most rows of a decode step the native GEMV should serve, and the microseconds
    timed: 2 where the profile's 1-row kernel is not the native one; else the most of
    `GEMV_ROWS_TIMED` at which a decode step of that many rows took no longer with the
    native GEMV serving it than with the batched products in the served dtype (packed
    for oneDNN). Both are timed as the engine runs them, alternating: the decode step of
    a runner (models/) built for a Llama of SmolLM2's layer shapes (`ROWS_MODEL`, random
    weights) in the served dtype, with `attention` as the profile chose it, so where the
    native GEMV serves a Llama step's every product the step is one native call
    (llama.py `_decode_step`), and the batched side pays its calls between products as
    the engine does.

    Why: a step of a few rows is still a pass over every weight. On an AVX2 EPYC that
    serves fp32 with the bf16 copy, the engine decoding 4 streams ran at 89-91 tok/s
    with those steps on fp32 products, barely above one stream's 90, and at 165-188
    with them on the native kernel; 16 streams 184-202 against 240-264. Why whole steps
    and not each product alone (as timed before): on a Zen 4 EPYC (`avx512_bf16`) a
    16-row product alone measured 2.9 ms on the native kernel against oneDNN's 2.7 (24
    weights, one thread), so 8 rows were chosen, while the engine's 16 streams decoded
    at 860-925 tok/s with 16-row steps on the one native call against 740-800 with the
    batched products (docs/design.md, "Decode steps of a few rows on the native GEMV").
    The native side's products run on the profile's `rows_loop`.

    Where it wins the most rows timed and the served weights are bf16 (its products are
    then exactly theirs, no copy), or fp32 with a bf16 copy (which serves the larger
    steps only of weights it holds exactly: models/base.py `Linear`), prompt chunks of
    `PREFILL_TOKENS_TIMED` tokens are timed the same way, shortest first: native serves
    steps up to the longest chunk on which it took no longer, and where it won them all
    the result is `GEMV_ROWS_ALL`: it serves every step. On an AVX2-only EPYC serving
    fp32, a step of 15 decode rows took 57 ms on the native kernel; a few prompt tokens
    beside them moved it to oneDNN's fp32 products, +35 ms for 4 tokens and +67 ms for
    16, against +19 and +34 ms on the native kernel (the runner alone, SmolLM2, 2
    threads, scratch `mixed.py`), so a long prompt beside 15 streams was read a few tokens
    a step. On an Intel Xeon without AMX, whose oneDNN bf16 products run
    at about half its fp32 ones, 24 SmolLM2 projections at 31 / 64 / 128 / 512 rows ran
    at 138 / 174 / 211 / 235 GFLOP/s on the native FMA loop against 109 / 152 / 164 /
    193 packed in oneDNN (2 threads, medians); a prompt's products then get their bits
    whatever shares its step. On an AMX Sapphire Rapids VM the native AMX loop won 64
    rows (472 against 401 GFLOP/s over SmolLM2's layers) and lost 512 (644 against
    1,295): oneDNN's AMX products tile the weights more widely than the packed layout
    lets this loop."""
    import torch

    if profile.gemv not in (GEMV_NATIVE, GEMV_NATIVE_AVX512):
        return 2, {}
    from gptstore.inference.models import build_runner

    most = max(GEMV_ROWS_TIMED)
    model = _rows_model(getattr(torch, profile.serving_dtype_name))
    decode_dtype = torch.bfloat16 if profile.decode_copy else None

    def make_runner(rows: int, slots: int = most, of: Any = model) -> Any:
        return build_runner(of, max_slots=slots, decode_dtype=decode_dtype,
                            gemv=profile.gemv, gemv_rows=rows, rows_loop=profile.rows_loop,
                            attention=attention)

    def long_runners() -> tuple[Any, Any]:  # (batched, native on every step)
        fewer = _rows_model(getattr(torch, profile.serving_dtype_name), LONG_CHUNK_LAYERS)
        return make_runner(2, 1, fewer), make_runner(GEMV_ROWS_ALL, 1, fewer)

    runners = {"native": make_runner(most), "batched": make_runner(2, most + 1)}
    steps = {name: _decode_steps(runner, GEMV_ROWS_TIMED) for name, runner in runners.items()}
    times: dict[str, float] = {}
    for rows in GEMV_ROWS_TIMED:
        best = _alternating_best({name: steps[name][rows] for name in runners},
                                 min_reps=3, budget_s=TIME_BUDGET_S, cap_s=TIME_CAP_S)
        times.update({f"{name}_{rows}": round(seconds * 1e6, 1)
                      for name, seconds in best.items()})
        if best["native"] <= best["batched"]:
            if rows == most and (profile.serving == "bf16" or profile.decode_copy):
                return _time_prompt_rows(runners["batched"],
                                         make_runner(GEMV_ROWS_ALL, 1), most, times,
                                         long_runners)
            return rows, times
    return 2, times


def _time_prompt_rows(batched: Any, native_all: Any, most: int, times: dict[str, float],
                      long_runners: Callable[[], tuple[Any, Any]]
                      ) -> tuple[int, dict[str, float]]:
    """`_time_gemv_rows` past the decode steps: prompt chunks of `PREFILL_TOKENS_TIMED`
    tokens, shortest first, on a runner whose native GEMV serves every step against
    `batched` (a free slot each; the longest chunk on the `long_runners()` pair, of
    `LONG_CHUNK_LAYERS` layers); `GEMV_ROWS_ALL` where native took no longer on every
    chunk, else the longest chunk it won (`most` for none); with `times` and the
    chunks'."""
    import torch

    from gptstore.inference.models import RowInput

    runners = {"native": native_all, "batched": batched}
    slots = {name: runner.allocate() for name, runner in runners.items()}
    won = most
    for tokens in PREFILL_TOKENS_TIMED:
        if tokens == PREFILL_TOKENS_TIMED[-1]:  # on fewer layers (LONG_CHUNK_LAYERS)
            runners["batched"], runners["native"] = long_runners()
            slots = {name: runner.allocate() for name, runner in runners.items()}
        chunk = [(3 * i) % 200 + 1 for i in range(tokens)]
        # at position 0 each time: the chunk overwrites its own keys
        rows = {name: [RowInput(slot, chunk, 0)] for name, slot in slots.items()}
        with torch.inference_mode():
            best = _alternating_best(
                {name: (lambda r=runners[name], rows=rows[name]: r.forward(rows))
                 for name in runners},
                min_reps=3, budget_s=TIME_BUDGET_S, cap_s=TIME_CAP_S)
        times = {**times, **{f"{name}_prompt_{tokens}": round(seconds * 1e6, 1)
                             for name, seconds in best.items()}}
        if best["native"] > best["batched"]:
            return won, times
        won = tokens
        if tokens == PREFILL_TOKENS_TIMED[-2] and \
                best["native"] * LONG_CHUNK_MARGIN > best["batched"]:
            return won, times  # too close to win the longest: it is not timed
    return GEMV_ROWS_ALL, times


def _layers_text(tokens: int) -> str:
    layers = LONG_CHUNK_LAYERS if tokens == PREFILL_TOKENS_TIMED[-1] else \
        ROWS_MODEL["num_hidden_layers"]
    return f" ({layers} layer{'s' if layers > 1 else ''})"


def gemv_rows_text(profile: MachineProfile) -> str | None:
    """What `_time_gemv_rows` measured, for `gptstore doctor`."""
    times = profile.gemv_rows_us
    if not times:
        return None
    parts = [f"{rows} rows: batched {times[f'batched_{rows}'] / 1e3:.1f} ms, native "
             f"{times[f'native_{rows}'] / 1e3:.1f} ms"
             for rows in GEMV_ROWS_TIMED if f"native_{rows}" in times]
    parts += [f"a {tokens}-token prompt{_layers_text(tokens)}: batched "
              f"{times[f'batched_prompt_{tokens}'] / 1e3:.1f} ms, native "
              f"{times[f'native_prompt_{tokens}'] / 1e3:.1f} ms"
              for tokens in PREFILL_TOKENS_TIMED if f"native_prompt_{tokens}" in times]
    most = "every step" if profile.gemv_rows >= GEMV_ROWS_ALL else \
        f"up to {profile.gemv_rows} rows"
    return f"{'; '.join(parts)} -> native {most}"


def _time_int4(attention: str) -> dict[str, float]:
    """Microseconds of a 1-row and a `max(GEMV_ROWS_TIMED)`-row decode step ("_batched")
    with 4-bit weights, in PyTorch's int4 kernel ("torch") and, where it builds,
    gptstore's serving every step ("native"): the decode steps of a runner built for a
    Llama of SmolLM2's layer shapes (`ROWS_MODEL`, random weights, quantized as the
    engine quantizes them) with the profile's `attention` kernel, as `_time_gemv_rows`
    times bf16 steps, so where every product is native the step is one native call.
    Alternating, best of each.

    Why whole steps: each product alone (24 weights of 576 x 1536, as timed until
    profile layout 10) measured the two kernels within a few percent on an AMX Sapphire
    Rapids VM (PyTorch 1648 us against native 1796 on 2026-12-06, so PyTorch's; 1792
    against 1767 on 2026-12-07), while the engine decoded at 80.5 tok/s on PyTorch's
    kernel and 139.5 on the native one (`int4_vs_llamacpp.py`): a product alone leaves
    out the calls between products that the one native call of a step saves. The
    steps measured the difference: 1 row 2.5 against 1.3 ms (6 layers, one thread)."""
    import torch

    from gptstore.inference import native
    from gptstore.inference.models import build_runner

    kernels = {INT4_TORCH: INT4_TORCH}  # timed name -> the runner's int4 kernel
    if native.library() is not None:  # every step where it can, so 16 rows are timed too
        kernels[INT4_NATIVE] = INT4_NATIVE_ALL
    model = _rows_model(torch.bfloat16)
    most = max(GEMV_ROWS_TIMED)
    passes: dict[str, Callable[[], object]] = {}
    for name, kernel in kernels.items():
        runner = build_runner(model, max_slots=most, quantize="int4", int4_gemv=kernel,
                              attention=attention)
        steps = _decode_steps(runner, (1, most))
        passes[name], passes[name + "_batched"] = steps[1], steps[most]
    with torch.inference_mode():
        best = _alternating_best(passes, min_reps=3, budget_s=TIME_BUDGET_S, cap_s=TIME_CAP_S)
    return {name: round(seconds * 1e6, 1) for name, seconds in best.items()}


def int4_kernel(times_us: dict[str, float]) -> str:
    """"native" where gptstore's kernel measured faster than PyTorch's for one row,
    "native-all" where it did for the batched pass too, else "torch"."""
    if _native_if_faster(times_us, INT4_TORCH) == INT4_TORCH:
        return INT4_TORCH
    batched = {k.removesuffix("_batched"): v for k, v in times_us.items()
               if k.endswith("_batched")}
    return INT4_NATIVE_ALL if _native_if_faster(batched, INT4_TORCH) != INT4_TORCH \
        else INT4_NATIVE


def _native_if_faster(times_us: dict[str, float], baseline: str) -> str:
    """"native" where it was timed and beat `baseline`, else `baseline`."""
    native_us = times_us.get("native")
    return "native" if native_us is not None and \
        native_us < times_us.get(baseline, float("inf")) else baseline


def _time_attention(dtype: Any) -> dict[str, float]:
    """Microseconds of decode rows' attention, a 1-row plus a 16-row group over
    `ATTENTION_SHAPE`, in each kernel this machine has: "sdpa" as the runner calls it
    (the new keys/values written into the cache, then SDPA on the grouped heads) and
    "native" (writing and attending in one call). Alternating, best of each."""
    import torch
    import torch.nn.functional as F

    from gptstore.inference import native

    n_heads, n_kv, head_dim, length = ATTENTION_SHAPE
    generator = torch.Generator().manual_seed(0)
    slots = max(ATTENTION_ROWS)
    k_cache = torch.randn(slots, n_kv, length, head_dim, generator=generator).to(dtype)
    v_cache = torch.randn(slots, n_kv, length, head_dim, generator=generator).to(dtype)
    cases = []
    for rows in ATTENTION_ROWS:
        qkv = torch.randn(rows, n_heads + 2 * n_kv, head_dim, generator=generator).to(dtype)
        cases.append((rows, qkv[:, :n_heads], qkv[:, n_heads:n_heads + n_kv],
                      qkv[:, n_heads + n_kv:]))
    write_slots = {rows: torch.arange(rows) for rows in ATTENTION_ROWS}
    write_positions = {rows: torch.full((rows,), length - 1) for rows in ATTENTION_ROWS}

    def sdpa() -> None:
        for rows, q, k, v in cases:
            k_cache[write_slots[rows], :, write_positions[rows]] = k
            v_cache[write_slots[rows], :, write_positions[rows]] = v
            F.scaled_dot_product_attention(
                q.reshape(rows, n_kv, n_heads // n_kv, head_dim), k_cache[:rows],
                v_cache[:rows], scale=head_dim ** -0.5)

    passes: dict[str, Callable[[], object]] = {ATTENTION_SDPA: sdpa}
    if native.library() is not None and native.attention_fits(head_dim):
        kernels = {rows: native.DecodeAttention(0, [length] * rows, n_heads, n_kv, head_dim)
                   for rows in ATTENTION_ROWS}

        def native_pass() -> None:
            for rows, q, k, v in cases:
                kernels[rows](q, k_cache, v_cache, head_dim ** -0.5, k, v)

        passes[ATTENTION_NATIVE] = native_pass
    best = _alternating_best(passes, min_reps=5, budget_s=TIME_BUDGET_S, cap_s=TIME_CAP_S)
    return {name: round(seconds * 1e6, 1) for name, seconds in best.items()}


def attention_kernel(times_us: dict[str, float]) -> str:
    """"native" where it measured faster than SDPA, else "sdpa"."""
    return _native_if_faster(times_us, ATTENTION_SDPA)


def read_bandwidth(nbytes: int | None = None) -> float:
    """Memory read bandwidth in GB/s: the best of a few sums over `nbytes` (default
    `BANDWIDTH_BYTES`) of fp32, each byte read once (a sum's arithmetic is far below
    what the cores can do)."""
    import torch

    nbytes = nbytes or BANDWIDTH_BYTES
    data = torch.ones(nbytes // 4)
    seconds = _best_time(lambda: data.sum(), budget_s=0.1, cap_s=1.0)
    return nbytes / seconds / 1e9


def choose(gflops: dict[str, dict[str, float]]) -> dict[str, str]:
    """bf16 for a use where it measured at least `BF16_MARGIN` x fp32, else fp32."""
    return {use: "bf16" if rates["bf16"] >= BF16_MARGIN * rates["fp32"] else "fp32"
            for use, rates in gflops.items()}


def _llama_import_seconds() -> float:
    """Import transformers' Llama (what `_time_gemv_rows` builds) and return how long
    that took: 1.3-3 s in a fresh process (transformers imports a model's module on first
    use), which the profile's seconds leave out as they leave out the kernels' build.
    Only where those steps are timed: elsewhere nothing needs the module."""
    began = time.perf_counter()
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401
    return time.perf_counter() - began


def measure() -> MachineProfile:
    """Time every use in both dtypes now (well under a second on the machines seen)."""
    import torch

    from gptstore.inference import native

    # the native kernels are built (a few seconds with the system compiler, once per
    # machine) or loaded before the clock starts: the build is not part of what is timed;
    # nor are the imports of transformers (~2 s where nothing has yet) and, where the
    # decode steps of a few rows are timed on its Llama, of that model's module
    # (`_llama_import_seconds`)
    native.library()
    import transformers  # noqa: F401
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    gflops: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(MEASURE_THREADS)
    try:
        with torch.no_grad():
            for use in USES:
                gflops[use] = _time_use(use)
        profile = MachineProfile(key=machine_key(), cpu=cpu_model(), torch=torch.__version__,
                                 threads=MEASURE_THREADS, flags=cpu_flags(), gflops=gflops,
                                 choices=choose(gflops), gemv=gemv_kernel(gflops),
                                 load_average=round(load, 2))
        # the cache holds the served dtype
        attention_us = _time_attention(getattr(torch, profile.serving_dtype_name))
        attention = attention_kernel(attention_us)
        rows_loop, rows_loop_us = _time_rows_loop(profile)
        profile = dataclasses.replace(profile, rows_loop=rows_loop,
                                      rows_loop_us=rows_loop_us)
        if profile.gemv in (GEMV_NATIVE, GEMV_NATIVE_AVX512):
            started += _llama_import_seconds()
        gemv_rows, gemv_rows_us = _time_gemv_rows(profile, attention)
    finally:
        torch.set_num_threads(threads)
    return dataclasses.replace(profile, attention=attention,
                               attention_us=attention_us, gemv_rows=gemv_rows,
                               gemv_rows_us=gemv_rows_us,
                               seconds=round(time.perf_counter() - started, 3))


# ------------------------------------------------------------------------ the cache

_memo: dict[str, MachineProfile] = {}
_lock = threading.Lock()


def machine_profile(home: Path, *, remeasure: bool = False) -> MachineProfile:
    """This machine's profile: from the home's cache, else measured now and cached.

    One measurement per process at most (unless `remeasure`): a second home on the same
    machine gets the profile written without timing again. A profile measured on a
    busy machine is not written (see the module docstring).
    """
    key = machine_key()
    path = Path(home) / CACHE_FILE
    with _lock:
        if not remeasure:
            cached = _read_cache(path).get(key)
            if cached is not None:
                try:
                    profile = MachineProfile.from_dict(cached)
                    _memo[key] = profile
                    return profile
                except (TypeError, ValueError):  # an older layout: measure again
                    pass
        remembered = _memo.get(key) if not remeasure else None
        fresh = remembered or measure()
        _memo[key] = fresh
        if fresh.quiet:
            _write_cache(path, key, fresh)
        return fresh


def int4_profile(home: Path) -> MachineProfile:
    """This machine's profile with its int4 kernels timed (`int4_us`, `int4_gemv`): the
    first time they are asked for on this machine (~0.5 s, and transformers' Llama
    module's import where nothing has loaded it: only int4 serving, an opt-in, needs
    them), then cached with the rest."""
    import torch

    profile = machine_profile(home)
    if profile.int4_us:
        return profile
    threads = torch.get_num_threads()
    torch.set_num_threads(MEASURE_THREADS)
    try:
        times = _time_int4(profile.attention)
    finally:
        torch.set_num_threads(threads)
    profile = dataclasses.replace(profile, int4_gemv=int4_kernel(times), int4_us=times)
    with _lock:
        _memo[profile.key] = profile
        if profile.quiet:
            _write_cache(Path(home) / CACHE_FILE, profile.key, profile)
    return profile


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: measured again and rewritten
    return doc if isinstance(doc, dict) else {}


def _write_cache(path: Path, key: str, profile: MachineProfile) -> None:
    """Merge `profile` into the cache file atomically (temp file in the same folder,
    then rename): a reader sees the old file or the new one, never half of one. Other
    machines' entries (a home on a shared disk) are kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = _read_cache(path)
        doc[key] = profile.to_dict()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass  # a read-only home: the profile still holds for this process


def precision_for(use: Use, home: Path) -> Precision:
    """The precision measured best for `use` on this machine."""
    return machine_profile(home).choice(use)


def serving_dtype_name(home: Path) -> str:
    """"bfloat16" or "float32": the weights dtype served models load in by default."""
    return machine_profile(home).serving_dtype_name


def decode_dtype_name(home: Path) -> str | None:
    """"bfloat16" where served weights are fp32 but 1-row steps measured faster in
    bf16 (the engine then keeps a bf16 copy for them), else None."""
    return machine_profile(home).decode_dtype_name


def gemv_rates_text(profile: MachineProfile) -> str | None:
    """"ATen GEMV 8.4, native 13.9 GFLOP/s -> native": the 1-row bf16 kernels timed and
    the one chosen (None where only ATen's was timed)."""
    decode = profile.gflops.get("decode", {})
    names = {GEMV_ATEN: "ATen GEMV", GEMV_ONEDNN: "packed oneDNN", GEMV_NATIVE: "native",
             GEMV_NATIVE_AVX512: "native AVX-512"}
    timed = [f"{names[k]} {decode[f'bf16_{k}']:.1f}" for k in GEMV_KERNELS
             if f"bf16_{k}" in decode]
    return f"{', '.join(timed)} GFLOP/s -> {profile.gemv}" if len(timed) > 1 else None


def rows_loop_text(profile: MachineProfile) -> str | None:
    """"16 rows: bf16 dot product 5.2 ms, FMA 3.9 ms -> fma" (None where nothing was
    timed)."""
    times = profile.rows_loop_us
    if not times:
        return None
    names = {ROWS_DOT: "bf16 dot product", ROWS_FMA: "FMA", ROWS_AMX: "AMX"}
    timed = ", ".join(f"{names[k]} {times[k] / 1e3:.1f} ms" for k in names if k in times)
    return f"{max(GEMV_ROWS_TIMED)} rows: {timed} -> {profile.rows_loop}"


def attention_text(profile: MachineProfile) -> str | None:
    """"1 + 16 rows x 256 positions: SDPA 410 us, native 250 us -> native" (None where
    nothing was timed)."""
    times = profile.attention_us
    if not times:
        return None
    length = ATTENTION_SHAPE[3]
    names = {ATTENTION_SDPA: "SDPA", ATTENTION_NATIVE: "native"}
    timed = ", ".join(f"{names[k]} {times[k]:.0f} us" for k in names if k in times)
    rows = " + ".join(str(r) for r in ATTENTION_ROWS)
    return f"{rows} rows x {length} positions: {timed} -> {profile.attention}"


def int4_text(profile: MachineProfile) -> str | None:
    """"1 row: PyTorch 2480 us, native 1330 us; 16 rows: PyTorch 11400 us, native 6300 us
    -> native-all": the decode steps with 4-bit weights in each kernel timed (None where
    nothing was timed)."""
    times = profile.int4_us
    if not times:
        return None
    names = {INT4_TORCH: "PyTorch", INT4_NATIVE: "native"}
    parts = []
    for suffix, rows in (("", 1), ("_batched", max(GEMV_ROWS_TIMED))):
        timed = ", ".join(f"{names[k]} {times[k + suffix]:.0f} us" for k in names
                          if k + suffix in times)
        if timed:
            parts.append(f"{rows} row{'s' if rows > 1 else ''}: {timed}")
    return f"{'; '.join(parts)} -> {profile.int4_gemv}"


def report_lines(profile: MachineProfile, bandwidth_gbs: float | None = None) -> list[str]:
    """The profile as text: what `gptstore doctor` prints, and the benchmarks' header."""
    lines = [f"CPU: {profile.cpu}, torch {profile.torch}; GFLOP/s measured on "
             f"{profile.threads} thread(s)",
             f"CPU flags: {' '.join(profile.flags) or '(none of the bf16-related ones)'}"]
    for use in USES:
        rows, n_in, n_out = SHAPES[use]
        rates = profile.gflops.get(use, {})
        lines.append(f"{use:>8} {rows} x {n_in} -> {n_out}: fp32 {rates.get('fp32', 0):.1f} "
                     f"GFLOP/s, bf16 {rates.get('bf16', 0):.1f} GFLOP/s -> "
                     f"{profile.choice(use)}")
    kernels = gemv_rates_text(profile)
    if kernels:
        lines.append(f"  bf16 1-row kernel: {kernels}")
    loop = rows_loop_text(profile)
    if loop:
        lines.append(f"  bf16 products of several rows: {loop}")
    rows = gemv_rows_text(profile)
    if rows:
        lines.append(f"  decode steps of a few rows: {rows}")
    attention = attention_text(profile)
    if attention:
        lines.append(f"  decode attention: {attention}")
    int4 = int4_text(profile)
    if int4:
        lines.append(f"  int4 kernels (opt-in dtype): {int4}")
    from gptstore.inference import native

    reason = native.unavailable_reason()
    if reason:
        lines.append(f"  native kernels not available: {reason}")
    if bandwidth_gbs is not None:
        lines.append(f"memory read: {bandwidth_gbs:.1f} GB/s")
    copy = ""
    if profile.decode_copy and profile.gemv_rows <= GEMV_DECODE_ROWS:
        copy = f" (with a bf16 copy for decode steps of 1-{profile.gemv_rows} rows)"
    elif profile.decode_copy:
        steps = "every step" if profile.gemv_rows >= GEMV_ROWS_ALL else \
            f"steps of 1-{profile.gemv_rows} rows"
        copy = f" (with a bf16 copy for {steps} where the weights are bf16 values, else " \
            f"for decode steps of 1-{GEMV_DECODE_ROWS} rows)"
    lines.append(f"served weights: {profile.serving}{copy}; training autocast: "
                 f"{profile.choice('training')} (bf16 where it measured >= {BF16_MARGIN}x fp32)")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(profile.measured_at))
    lines.append(f"measured {when} in {profile.seconds:.2f} s, load average "
                 f"{profile.load_average:.2f} on {os.cpu_count()} cores"
                 + ("" if profile.quiet else " (busy: not cached, measured again next time)"))
    return lines
