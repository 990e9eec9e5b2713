"""A fine-tuning job against the same run in the foreground, and the API's latency while
a job trains.

    .venv/bin/python benchmarks/jobs_vs_foreground.py [--data ../shared/data/sst2]

1. foreground: `gptstore finetune ... --json` in its own process, as a user runs it:
   SmolLM2-135M-Instruct + LoRA as an SST-2 classifier on the first `--sentences`
   training sentences, 1 epoch, batch 16, no validation; the training loop's tokens/s
   and the command's wall time;
2. the same run as a job: `gptstore serve` (its in-process worker runs the job in a
   child process), the file uploaded and the job created with the official `openai`
   client and polled to `succeeded`; the published model's tokens/s (the same
   `RunRecord` figure) and the time from the create call to `succeeded`;
3. latency: with no job running, then while an identical job trains, a client sends
   `GET /v1/models` and a 16-token greedy chat completion of the base model one after
   another; prints p50 / p95 / p99 of each.

Prints the machine first (CPU, GEMM GFLOP/s in both dtypes, memory bandwidth, load:
`machine.describe_machine`); the machine is shared, so the share of the CPU other
processes used during each phase (`machine.OtherLoad`) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from finetune_vs_hf import DEFAULT_DATA, read_sst2, write_jsonl
from machine import OtherLoad, describe_machine

from gptstore.catalog.importers import BUILTIN_NAME, ensure_builtin
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def foreground(args: argparse.Namespace, train: Path, name: str) -> dict[str, Any]:
    env = {**os.environ, "GPTSTORE_HOME": str(args.home)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gptstore", "finetune", "--base", BUILTIN_NAME,
         "--train", str(train), "--name", name, "--task", "classification",
         "--epochs", "1", "--batch-size", "16", "--valid-split", "0", "--json"],
        env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"foreground finetune failed:\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout)
    return {"tokens_per_second": doc["tokens_per_second"], "train_seconds":
            doc["train_seconds"], "wall_seconds": round(wall, 1), "tokens": doc["train_tokens"]}


def create_job(server: RemoteServer, client: Any, file_id: str) -> str:
    job = client.fine_tuning.jobs.create(
        model=BUILTIN_NAME, training_file=file_id,
        hyperparameters={"n_epochs": 1, "batch_size": 16},
        extra_body={"task": "classification", "valid_split": 0, "checkpoint_models": 0})
    return str(job.id)


def wait(client: Any, job_id: str) -> Any:
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            if job.status != "succeeded":
                raise SystemExit(f"job {job_id} {job.status}: {job.error}")
            return job
        time.sleep(0.5)


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, p99 {q[98]:.0f} ms (n={len(ms)})"


def probe(server: RemoteServer, client: Any, *, seconds: float | None = None,
          until: Any = None, minimum: int = 30) -> dict[str, list[float]]:
    """`GET /v1/models` and a 16-token chat, one after another, for `seconds` or while
    `until()` is false (at least `minimum` rounds)."""
    times: dict[str, list[float]] = {"models": [], "chat": []}
    deadline = time.monotonic() + (seconds or 0)
    while True:
        start = time.perf_counter()
        httpx.get(server.url + "/v1/models", timeout=60).raise_for_status()
        times["models"].append(time.perf_counter() - start)
        start = time.perf_counter()
        client.chat.completions.create(model=BUILTIN_NAME, messages=CHAT, max_tokens=16,
                                       temperature=0, extra_body={"ignore_eos": True})
        times["chat"].append(time.perf_counter() - start)
        done = until() if until is not None else time.monotonic() >= deadline
        if done and len(times["chat"]) >= minimum:
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-bench-jobs"))
    parser.add_argument("--sentences", type=int, default=800)
    args = parser.parse_args()
    import openai

    print(describe_machine(), flush=True)
    settings = Settings(home=args.home)
    catalog = Catalog(settings)
    ensure_builtin(catalog)
    catalog.close()
    rows = read_sst2(args.data / "stsa.binary.train", limit=args.sentences)
    train = write_jsonl(rows, Path(tempfile.mkdtemp()) / "sst2.jsonl")
    stamp = time.strftime("%H%M%S")

    load = OtherLoad()
    fg = foreground(args, train, f"bench/fg-{stamp}")
    fg["other_cpu"] = load()
    print(f"foreground `gptstore finetune`: {fg['tokens_per_second']:.1f} tok/s "
          f"({fg['tokens']} tokens in {fg['train_seconds']:.1f} s of training, "
          f"{fg['wall_seconds']:.1f} s command) [other processes: {fg['other_cpu']:.0%}]",
          flush=True)

    with RemoteServer(args.home, timeout=300) as server:
        load = OtherLoad()  # the server and its jobs are children of this script
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with train.open("rb") as handle:
            file_id = client.files.create(file=handle, purpose="fine-tune").id
        started = time.perf_counter()
        job = wait(client, create_job(server, client, file_id))
        job_wall = time.perf_counter() - started
        detail = httpx.get(f"{server.url}/api/models/{job.fine_tuned_model}/versions/1").json()
        job_tps = detail["metrics"]["train"]["tokens_per_second"]
        other = load()
        ratio = job_tps / fg["tokens_per_second"]
        print(f"job through the API: {job_tps:.1f} tok/s, {job_wall:.1f} s from create to "
              f"succeeded; job / foreground = {ratio:.3f} [other processes: {other:.0%}]",
              flush=True)

        probe(server, client, seconds=2, minimum=3)  # warm: the engine loads the base
        load()
        idle = probe(server, client, seconds=20)
        idle_other = load()
        job_id = create_job(server, client, file_id)
        while client.fine_tuning.jobs.retrieve(job_id).status != "running":
            time.sleep(0.2)
        time.sleep(8)  # past the job's model loading: measure while it trains
        busy = probe(server, client, until=lambda: client.fine_tuning.jobs.retrieve(
            job_id).status != "running")
        busy_other = load()
        wait(client, job_id)
    print(f"GET /v1/models, no job:       {percentiles(idle['models'])} "
          f"[other processes: {idle_other:.0%}]")
    print(f"GET /v1/models, job training: {percentiles(busy['models'])} "
          f"[other processes: {busy_other:.0%}]")
    print(f"16-token chat, no job:        {percentiles(idle['chat'])}")
    print(f"16-token chat, job training:  {percentiles(busy['chat'])}")


if __name__ == "__main__":
    main()
