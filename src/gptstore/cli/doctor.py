"""`gptstore doctor`: what this machine measured, and the precision each use runs in.

Prints the CPU, the flags that bear on bf16, the GFLOP/s of each timed shape in fp32 and
bf16, the memory read bandwidth, the choices, and the explicit settings that override
them (`inference/precision.py` owns the measuring and the cache).
"""

from __future__ import annotations

from typing import Annotated

import typer

from gptstore.cli.common import console, print_json, settings


def doctor(
    remeasure: Annotated[bool, typer.Option(
        help="Time the shapes again and replace this machine's cached profile.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the CPU, its measured matmul speeds in fp32 and bf16, and the precision
    chosen for training, batched serving and single-stream decoding."""
    from gptstore.inference.precision import (
        CACHE_FILE,
        int4_profile,
        machine_profile,
        read_bandwidth,
        report_lines,
    )

    cfg = settings()
    machine_profile(cfg.home, remeasure=remeasure)
    profile = int4_profile(cfg.home)  # the opt-in int4 kernels too (timed once, cached)
    bandwidth = read_bandwidth()
    overrides = {"GPTSTORE_INFERENCE_DTYPE": cfg.inference_dtype,
                 "GPTSTORE_TRAINING_PRECISION": cfg.training_precision}
    if as_json:
        print_json({**profile.to_dict(), "serving": profile.serving,
                    "decode_copy": profile.decode_copy,
                    "bandwidth_gbs": round(bandwidth, 2), "settings": overrides,
                    "cache": str(cfg.home / CACHE_FILE)})
        return
    for line in report_lines(profile, bandwidth):
        console.print(line, highlight=False, soft_wrap=True)
    served = cfg.inference_dtype
    note = "measured choice" if served == "auto" else "explicit setting: wins"
    console.print(f"GPTSTORE_INFERENCE_DTYPE={served} ({note})", highlight=False,
                  soft_wrap=True)
    trained = cfg.training_precision
    note = "measured choice" if trained == "auto" else "explicit setting: wins"
    console.print(f"GPTSTORE_TRAINING_PRECISION={trained} ({note}); a fine-tune's own "
                  "--precision bf16 / fp32 wins over both", highlight=False, soft_wrap=True)
    console.print(f"cache: {cfg.home / CACHE_FILE}", highlight=False)
