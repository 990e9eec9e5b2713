"""The peer as its users run it: transformers `generate` in its own process, on its main
thread, with `from_pretrained`'s defaults (dtype "auto": the checkpoint's own dtype).

    python benchmarks/peer_generate.py MODEL_DIR PROMPTS.json --tokens 128 [--dtype float32]

PROMPTS.json is a list of token-id lists. Greedy, `min_new_tokens = max_new_tokens`
(the engine's `ignore_eos`), one prompt after another, after one short warm-up call.
Prints one JSON object: the dtype, and per prompt the new tokens, the seconds, and the
decode rate after the first token (streamed through a `TextStreamer`-like hook).

Run it as a child process while nothing of ours runs: an idle gptstore engine's threads
in the same process, or a server beside it, slow `generate` by up to a third on 2 cores
(../shared/NOTES.md); on a short-lived thread it measured 17-18 tok/s where its own
process gave 26-40.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer


class FirstTokenClock(BaseStreamer):
    """Notes when the first new token comes (generate first puts the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", default=None, help="default: from_pretrained's own")
    args = parser.parse_args()
    kwargs = {"dtype": getattr(torch, args.dtype)} if args.dtype else {}
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs).eval()
    load_seconds = time.perf_counter() - started
    prompts = json.loads(args.prompts.read_text())
    runs = []
    for i, ids in enumerate([prompts[0][:8], *prompts]):
        n = 4 if i == 0 else args.tokens
        clock = FirstTokenClock()
        tensor = torch.tensor([ids])
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(tensor, attention_mask=torch.ones_like(tensor),
                                 max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 streamer=clock)
        end = time.perf_counter()
        if i == 0:
            continue  # warm-up
        new = out.shape[1] - len(ids)
        first = clock.first or end
        runs.append({"tokens": new, "seconds": end - start, "ttft": first - start,
                     "decode_tok_s": (new - 1) / max(1e-9, end - first)})
    print(json.dumps({"dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                      "threads": torch.get_num_threads(), "load_seconds": load_seconds,
                      "runs": runs}))


def run_peer(model: Path, prompts: list[list[int]], tokens: int,
             dtype: str | None = None) -> dict:
    """Run this script as a child process and return its JSON (call it while no engine
    of ours is running in the calling process)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(prompts, handle)
        handle.flush()
        command = [sys.executable, __file__, str(model), handle.name, "--tokens", str(tokens)]
        if dtype:
            command += ["--dtype", dtype]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peer failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
