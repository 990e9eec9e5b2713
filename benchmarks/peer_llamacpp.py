"""The int4 peer as its users run it: llama.cpp (through llama-cpp-python) on a GGUF file,
in its own process and its own virtual environment, on its main thread.

    PEER_VENV/bin/python benchmarks/peer_llamacpp.py MODEL.gguf PROMPTS.json \
        --tokens 128 --threads 2

PROMPTS.json is a list of token-id lists (the same ids gptstore is given: the GGUF holds
the same tokenizer). Greedy (`temp=0`), `tokens` new tokens per prompt whatever they
are (llama-cpp-python's low-level `generate` stops only when asked, the engine's
`ignore_eos`), one prompt after another, after one short warm-up. `Llama`'s defaults
otherwise (`n_ctx` 512 holds the prompts and their 128 tokens), except `n_threads`: its
default is half the cores (1 on these 2-core machines), and the comparison is at the
same thread count as gptstore's; and `verbose=False`, which only silences its log.
Prints one JSON object: per prompt the new tokens, the seconds, the time to the first
token and the decode rate after it.

Only the standard library and `llama_cpp` are imported: this runs in the peer's venv,
not gptstore's (`int4_vs_llamacpp.py` builds that venv).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()

    import llama_cpp

    started = time.perf_counter()
    llm = llama_cpp.Llama(str(args.model), n_threads=args.threads, verbose=False)
    load_seconds = time.perf_counter() - started
    prompts = json.loads(args.prompts.read_text())
    runs = []
    for i, ids in enumerate([prompts[0][:8], *prompts]):
        n = 4 if i == 0 else args.tokens
        llm.reset()  # no reuse of the previous prompt's cache: every prompt is read whole
        start = time.perf_counter()
        first = None
        new = 0
        for _token in llm.generate(ids, temp=0.0, reset=True):
            new += 1
            if first is None:
                first = time.perf_counter()
            if new == n:
                break
        end = time.perf_counter()
        if i == 0:
            continue  # warm-up
        assert first is not None
        runs.append({"tokens": new, "seconds": end - start, "ttft": first - start,
                     "decode_tok_s": (new - 1) / max(1e-9, end - first)})
    print(json.dumps({"version": llama_cpp.__version__, "threads": args.threads,
                      "load_seconds": load_seconds, "runs": runs}))


if __name__ == "__main__":
    main()
