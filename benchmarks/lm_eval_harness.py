"""lm-evaluation-harness against a store model through gptstore's OpenAI API, next to the
harness's own in-process transformers model, on the same task and documents.

    .venv/bin/python benchmarks/lm_eval_harness.py [--data ../shared/data/sst2] [--limit 200]

The harness runs as its users run it: the `lm_eval` command from a virtual environment of
its own (`--harness-venv`, made on the first run: torch 2.13.0 from this disk, lm_eval
and gptstore's transformers version; never a dependency of gptstore). The task is a
multiple-choice one written here as the harness's YAML over local data (its own tasks
download their data sets from the Hub, unreachable here): SST-2 dev sentences as
"Review: <sentence>\\nSentiment:" with the choices " negative" / " positive", scored by
loglikelihood, metric `acc`.

1. gptstore: `gptstore serve` on the benchmark store; the harness's `local-completions`
   model sends token-id prompts (context + choice) with echo, max_tokens 1, logprobs 1,
   temperature 0 to /v1/completions and sums the prompt tokens' logprobs past the context;
2. the peer: the harness's `hf` model on the store's snapshot folder of the same model,
   fp32, the same batch size.

Prints the machine, each side's accuracy and wall time (command to result, model loading
included), and on how many documents the two chose the same answer, with the largest
difference of a choice's loglikelihood.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import httpx
from finetune_vs_hf import DEFAULT_DATA, open_store, read_sst2
from machine import describe_machine

LM_EVAL_VERSION = "0.4.13"
TASK = "gptstore_sst2"
TEMPLATE = "Review: {{text}}\\nSentiment:"


def harness_python(folder: Path) -> Path:
    """The harness's own virtual environment: made once, reused after."""
    python = folder / "bin" / "python"
    import transformers

    wanted = f"lm_eval=={LM_EVAL_VERSION} transformers=={transformers.__version__}"
    stamp = folder / "gptstore-harness.txt"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"making the harness's virtual environment in {folder} ({wanted})", flush=True)
    venv.create(folder, with_pip=True, clear=True)
    for packages in (["torch==2.13.0"],  # the CPU build on this disk, before anything asks
                     [f"lm_eval[api]=={LM_EVAL_VERSION}",
                      f"transformers=={transformers.__version__}", "accelerate"]):
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"installing {packages} failed:\n{proc.stderr[-3000:]}")
    stamp.write_text(wanted)
    return python


def write_task(work: Path, rows: list[tuple[str, str]]) -> Path:
    """The harness's task YAML over a local JSONL of the dev sentences."""
    data = work / "sst2_dev.jsonl"
    data.write_text("".join(json.dumps({"text": text, "label": int(label == "positive")})
                            + "\n" for text, label in rows))
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    validation: {data}\n"
        "validation_split: validation\n"
        "output_type: multiple_choice\n"
        f'doc_to_text: "{TEMPLATE}"\n'
        'doc_to_choice: ["negative", "positive"]\n'
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n")
    return tasks


def run_harness(python: Path, model: str, model_args: str, tasks: Path, out: Path,
                limit: int | None, batch_size: int) -> tuple[dict[str, Any], list[dict], float]:
    """One `lm_eval` command: (its results, its per-document samples, wall seconds)."""
    command = [str(python), "-m", "lm_eval", "--model", model, "--model_args", model_args,
               "--tasks", TASK, "--include_path", str(tasks), "--batch_size", str(batch_size),
               "--output_path", str(out), "--log_samples"]
    if limit:
        command += ["--limit", str(limit)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"lm_eval --model {model} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in
               next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results["results"][TASK], sorted(samples, key=lambda s: s["doc_id"]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with stsa.binary.dev")
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-bench"),
                        help="GPTSTORE_HOME of the benchmark store")
    parser.add_argument("--harness-venv", type=Path,
                        default=Path(tempfile.gettempdir()) / "gptstore-lm-eval-venv")
    parser.add_argument("--limit", type=int, default=None,
                        help="the first N dev sentences (default: all 872)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print one JSON object too")
    args = parser.parse_args()
    print(describe_machine(), flush=True)
    from gptstore.testing.server import RemoteServer

    python = harness_python(args.harness_venv)
    _settings, catalog, base = open_store(args.home)
    folder = catalog.snapshot(base)
    catalog.close()
    work = Path(tempfile.mkdtemp(prefix="lm-eval-"))
    tasks = write_task(work, read_sst2(args.data / "stsa.binary.dev"))

    started = time.perf_counter()
    with RemoteServer(args.home) as server:
        served = run_harness(
            python, "local-completions",
            f"model={base.model},base_url={server.url}/v1/completions,tokenizer={folder},"
            "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1",
            tasks, work / "served", args.limit, args.batch_size)
        # how much of the prompts the server took from its prefix cache (a choice's
        # context, computed for the question's first choice)
        engine = httpx.get(f"{server.url}/api/engine", timeout=10).json()
    served_wall = time.perf_counter() - started  # the server's start included
    peer = run_harness(python, "hf", f"pretrained={folder},dtype=float32", tasks,
                       work / "hf", args.limit, args.batch_size)

    same = sum(a["acc"] == b["acc"] and _choice(a) == _choice(b)
               for a, b in zip(served[1], peer[1], strict=True))
    gap = max(abs(x - y) for a, b in zip(served[1], peer[1], strict=True)
              for x, y in zip(_loglikelihoods(a), _loglikelihoods(b), strict=True))
    n = len(served[1])
    print(f"\nSST-2 dev, {n} sentences, zero-shot, {base.ref} (lm_eval {LM_EVAL_VERSION}, "
          f"batch {args.batch_size})")
    print(f"  gptstore serve + local-completions: acc {served[0]['acc,none']:.3f} "
          f"(+-{served[0]['acc_stderr,none']:.3f}), {served_wall:.0f} s with the server's start")
    print(f"    prompt tokens served from the prefix cache: "
          f"{engine['prefix_cache_hit_tokens']:,}")
    print(f"  lm_eval's hf model, fp32:          acc {peer[0]['acc,none']:.3f} "
          f"(+-{peer[0]['acc_stderr,none']:.3f}), {peer[2]:.0f} s")
    print(f"  the same answer on {same} of {n} sentences; largest loglikelihood "
          f"difference {gap:.1e}")
    if args.json:
        print(json.dumps({"sentences": n, "served_acc": served[0]["acc,none"],
                          "hf_acc": peer[0]["acc,none"], "served_seconds": round(served_wall, 1),
                          "hf_seconds": round(peer[2], 1), "same_answer": same,
                          "prefix_cache_hit_tokens": engine["prefix_cache_hit_tokens"],
                          "max_loglikelihood_difference": gap}))


def _loglikelihoods(sample: dict) -> list[float]:
    """Each choice's loglikelihood in a harness sample (`filtered_resps`: [ll, greedy])."""
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def _choice(sample: dict) -> int:
    scores = _loglikelihoods(sample)
    return scores.index(max(scores))


if __name__ == "__main__":
    main()
