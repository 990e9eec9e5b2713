"""Fine-tuning throughput: gptstore vs Hugging Face `Trainer` + PEFT, same task, one run.

    .venv/bin/python benchmarks/finetune_vs_hf.py [--data ../shared/data/sst2]

The setting of issue 3: SmolLM2-135M-Instruct as a sentiment classifier on the first
2000 sentences of SST-2 (`stsa.binary.train`), 1 epoch, LoRA r=8 on q_proj and v_proj,
batch 16, the same learning rate, warm-up, schedule, weight decay, LoRA alpha and
dropout on both sides. Prints each side's training throughput in non-padding tokens per
second (tokens of the training examples x epochs / training-loop seconds), the ratio,
and both dev accuracies (`stsa.binary.dev`, 872 sentences).

The Trainer runs as people run it: fp32 (its default on CPU; `--hf-bf16` turns on its
bf16 autocast), `DataCollatorWithPadding` (dynamic padding), default sampler.
gptstore runs with its defaults: the precision measured best on this machine (bf16
frozen weights + autocast where bf16 pays), length-grouped batches, SDPA attention, no
LM head for classification, validation at `eval_every: auto` on the dev file.

Each side runs in its own process, on its main thread (this script again with
`--only`), one after the other, and reports two times: the training loop's throughput,
and the end-to-end wall clock of the work a user waits for: for gptstore, from the
command to the published model (data, model load, training, validation, publishing);
for the Trainer, model load + `train()` + one final `predict` on the dev set. The
machine (CPU, GEMM GFLOP/s in both dtypes, memory bandwidth) is printed first.

The store lives in --home (default /tmp/gptstore-bench): the built-in base is pulled
there the first time (~40 s) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2"
LABELS = {"0": "negative", "1": "positive"}


# ------------------------------------------------------------------------ shared bits


def read_sst2(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """`LABEL sentence` lines -> [(sentence, "negative" | "positive")]."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        rows.append((text.strip(), LABELS[label]))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def write_jsonl(rows: list[tuple[str, str]], path: Path) -> Path:
    """Our classification format: one {"text", "label"} object per line."""
    with path.open("w") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def open_store(home: Path) -> tuple[Any, Any, Any]:
    """(settings, catalog, base version) of the benchmark store, pulling the base once."""
    os.environ["GPTSTORE_HOME"] = str(home)
    from gptstore.catalog.importers import BUILTIN_NAME, ensure_builtin
    from gptstore.catalog.repository import Catalog
    from gptstore.settings import Settings

    settings = Settings(home=home)
    catalog = Catalog(settings)
    if not catalog.exists(BUILTIN_NAME):
        print(f"pulling {BUILTIN_NAME} into {home} (first run only)...", flush=True)
        ensure_builtin(catalog)
    return settings, catalog, catalog.resolve(BUILTIN_NAME)


def fresh_name(catalog: Any, name: str) -> str:
    """Remove an earlier benchmark model of that name (and its run folder)."""
    import shutil

    if catalog.exists(name):
        catalog.delete_model(name)
    ns, model = name.split("/")
    shutil.rmtree(catalog.settings.runs_dir / f"{ns}--{model}", ignore_errors=True)
    return name


class ForeignLoad:
    """Share of the machine's CPU time that *other* processes used since the last call
    (Linux /proc). On a shared machine a run next to a busy neighbour is not a
    measurement of us: two OpenMP threads then wait on each other at every barrier."""

    def __init__(self) -> None:
        self._last = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[int, int, int] | None:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        return sum(cpu), sum(cpu) - cpu[3] - cpu[4], int(mine[11]) + int(mine[12])

    def __call__(self) -> float:
        now, last = self._snapshot(), self._last
        self._last = now
        if now is None or last is None or now[0] == last[0]:
            return float("nan")
        total, busy, ours = (a - b for a, b in zip(now, last, strict=True))
        return max(0.0, (busy - ours) / total)


def wait_for_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (at most `limit_s`) until other processes use under `threshold` of the CPU
    over 5 s; returns the last reading."""
    meter, deadline = ForeignLoad(), time.monotonic() + limit_s
    while True:
        time.sleep(5)
        load = meter()
        if load != load or load < threshold or time.monotonic() > deadline:  # nan: no /proc
            return load
        print(f"  waiting: other processes use {load:.0%} of the CPU", flush=True)


# --------------------------------------------------------------------------- gptstore


def run_gptstore(args: argparse.Namespace, settings: Any, catalog: Any, base: Any,
                 train: Path, dev: Path) -> dict[str, Any]:
    from gptstore.training import TrainConfig, finetune, zero_shot

    name = fresh_name(catalog, "bench/sst2-2000-lora")
    config = TrainConfig(
        base=base.ref, train_file=str(train), valid_file=str(dev), name=name,
        task="classification", method="lora", epochs=args.epochs, batch_size=16,
        learning_rate=args.lr, lora_r=8, lora_alpha=16, lora_dropout=args.lora_dropout,
        lora_target=["q_proj", "v_proj"], weight_decay=0.01, warmup_ratio=args.warmup,
        schedule="linear", save_every=0, seed=args.seed)
    zero_shot.forget(settings.home)  # time a first run: no step-0 validation to reuse
    run = finetune(config, settings=settings, catalog=catalog).record
    return {"tokens": run.train_tokens, "seconds": run.train_seconds,
            "tokens_per_second": run.tokens_per_second,
            "slots": round(run.train_tokens / max(1e-9, 1 - run.padding_fraction)),
            "dev_accuracy": run.final["accuracy"], "padding": run.padding_fraction,
            "precision": run.precision,
            "timings": {k: round(v, 1) for k, v in run.timings.items()}}


# ------------------------------------------------------------------ HF Trainer + PEFT


class CountingCollator:
    """The Trainer's collator, counting the token slots (padding included) of the
    batches it builds: what its matmuls compute. One integer sum a batch."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate
        self.slots = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.collate(features)
        self.slots += int(batch["input_ids"].numel())
        return batch


def run_trainer(args: argparse.Namespace, folder: Path, train_rows: list[tuple[str, str]],
                dev_rows: list[tuple[str, str]]) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(folder)
    label_id = {"negative": 0, "positive": 1}

    def encode(rows: list[tuple[str, str]]) -> list[dict[str, Any]]:
        return [{"input_ids": tokenizer(text)["input_ids"], "labels": label_id[label]}
                for text, label in rows]

    started = time.perf_counter()
    train_set, dev_set = encode(train_rows), encode(dev_rows)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, dtype=torch.float32, pad_token_id=tokenizer.pad_token_id)
    model = get_peft_model(model, LoraConfig(
        task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=args.lora_dropout,
        target_modules=["q_proj", "v_proj"]))
    steps = -(-len(train_set) // 16) * args.epochs
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=16, per_device_eval_batch_size=32,
            num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01,
            warmup_steps=round(args.warmup * steps), lr_scheduler_type="linear",
            logging_steps=25, save_strategy="no", eval_strategy="no", report_to=[],
            seed=args.seed, use_cpu=True, bf16=args.hf_bf16, disable_tqdm=True)
        collate = CountingCollator(DataCollatorWithPadding(tokenizer))
        trainer = Trainer(model=model, args=training_args, train_dataset=train_set,
                          data_collator=collate)
        output = trainer.train()
        seconds = output.metrics["train_runtime"]
        slots = collate.slots
        evaluating = time.perf_counter()
        # a list of feature dicts, as `train_dataset` above: the Trainer indexes either
        predictions = trainer.predict(dev_set).predictions  # type: ignore[arg-type]
        eval_seconds = time.perf_counter() - evaluating
    tokens = sum(len(row["input_ids"]) for row in train_set) * args.epochs
    correct = sum(int(p.argmax() == row["labels"]) for p, row in zip(predictions, dev_set,
                                                                     strict=True))
    return {"tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 1), "slots": slots,
            "dev_accuracy": correct / len(dev_set),
            "precision": "bf16 autocast" if args.hf_bf16 else "fp32",
            "timings": {"train": round(seconds, 1), "evaluate": round(eval_seconds, 1),
                        "total": round(time.perf_counter() - started, 1)}}


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with stsa.binary.train and stsa.binary.dev")
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-bench"),
                        help="GPTSTORE_HOME of the benchmark store")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--dev-examples", type=int, default=None,
                        help="first N dev sentences only (default: all 872)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-bf16", action="store_true", help="Trainer with bf16=True")
    parser.add_argument("--only", choices=["gptstore", "hf"],
                        help="run one side only, in this process, and print its JSON")
    parser.add_argument("--wait-quiet", type=float, default=600, metavar="SECONDS",
                        help="before each side, wait up to this long for other processes "
                             "to leave the CPU (0: do not wait)")
    parser.add_argument("--json", action="store_true", help="print one JSON object too")
    args = parser.parse_args()

    train_file = args.data / "stsa.binary.train"
    dev_file = args.data / "stsa.binary.dev"
    if not train_file.is_file() or not dev_file.is_file():
        sys.exit(f"SST-2 not found under {args.data}: pass --data DIR")
    train_rows = read_sst2(train_file, args.examples)
    dev_rows = read_sst2(dev_file, args.dev_examples)
    settings, catalog, base = open_store(args.home)
    work = Path(tempfile.mkdtemp(prefix="sst2-"))
    train = write_jsonl(train_rows, work / "train.jsonl")
    dev = write_jsonl(dev_rows, work / "dev.jsonl")
    print(f"SST-2: {len(train_rows)} training sentences, {len(dev_rows)} dev; {args.epochs} "
          f"epoch(s), LoRA r=8 q_proj,v_proj, batch 16, lr {args.lr}", flush=True)

    if args.only is not None:  # one side, in this process (the parent reads the JSON)
        run = {"gptstore": lambda: run_gptstore(args, settings, catalog, base, train, dev),
               "hf": lambda: run_trainer(args, catalog.snapshot(base), train_rows,
                                         dev_rows)}[args.only]
        print(json.dumps(run()))
        catalog.close()
        return

    from machine import OtherLoad, describe_machine

    print(describe_machine(), flush=True)
    results: dict[str, Any] = {}
    labels = {"gptstore": "gptstore",
              "hf": "HF Trainer + PEFT" + (" (bf16)" if args.hf_bf16 else " (fp32)")}
    for key, label in labels.items():
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        meter, started = OtherLoad(), time.perf_counter()
        results[key] = run_side(key, sys.argv[1:])
        results[key]["process_seconds"] = round(time.perf_counter() - started, 1)
        results[key]["foreign_cpu"] = round(meter(), 3)
        _print(label, results[key])
    if "gptstore" in results and "hf" in results:
        ratio = results["gptstore"]["tokens_per_second"] / results["hf"]["tokens_per_second"]
        results["speedup"] = round(ratio, 2)
        print(f"speed-up (non-padding tokens/s): {ratio:.2f}x   dev accuracy: gptstore "
              f"{results['gptstore']['dev_accuracy']:.3f} vs Trainer "
              f"{results['hf']['dev_accuracy']:.3f}")
        ours, theirs = (results[k]["timings"]["total"] for k in ("gptstore", "hf"))
        results["end_to_end_ratio"] = round(ours / theirs, 3)
        print(f"end to end: gptstore command -> published model {ours:.1f} s, Trainer load + "
              f"train + evaluate {theirs:.1f} s = {ours / theirs:.2f} of its time")
        print(matmul_work(results["gptstore"], results["hf"], catalog.snapshot(base)))
    if args.json:
        print(json.dumps(results))
    catalog.close()


def matmul_work(ours: dict[str, Any], theirs: dict[str, Any], folder: Path) -> str:
    """Both sides' matmul work against this machine's own rate for it: the frozen
    projections' forward and input-gradient products of every token slot (padding
    included; LoRA's and attention's products left out, ~2% here), in GFLOP/s, as a share
    of the training-sized matmul's rate in that side's precision, one thread's as the
    machine line printed it times the torch threads. And the share our side would need
    for issue 13's 4x."""
    import torch
    from machine import measured_profile, projection_weights

    per_layer, layers, _config = projection_weights(folder)
    flop = 2 * 2 * per_layer * layers  # forward and input gradients, 2 FLOP a weight
    rates = measured_profile().gflops["training"]
    threads = torch.get_num_threads()

    def capacity(side: dict[str, Any]) -> float:  # GFLOP/s its precision allows here
        return rates["bf16" if "bf16" in side["precision"] else "fp32"] * threads

    def rate(side: dict[str, Any]) -> float:  # GFLOP/s of its matmul work
        return side["slots"] * flop / side["seconds"] / 1e9

    ours_rate, theirs_rate = rate(ours), rate(theirs)
    ours_share, theirs_share = ours_rate / capacity(ours), theirs_rate / capacity(theirs)
    # 4x the Trainer's tokens/s, at our slots per token
    needed = 4 * theirs["tokens_per_second"] * ours["slots"] / ours["tokens"] * flop / 1e9
    needed_share = needed / capacity(ours)
    return (f"matmul work ({flop / 1e6:.0f} MFLOP a token slot: frozen projections, forward "
            f"and input gradients): gptstore {ours['slots']} slots, {ours_rate:.0f} GFLOP/s "
            f"= {ours_share:.0%} of {threads} x its one-thread training-sized matmul; Trainer "
            f"{theirs['slots']} slots, {theirs_rate:.0f} GFLOP/s = {theirs_share:.0%}; 4x the "
            f"Trainer would take gptstore at {needed_share:.0%}")


def run_side(side: str, argv: list[str]) -> dict[str, Any]:
    """One side in a process of its own (this script with `--only SIDE`): its JSON."""
    import subprocess

    command = [sys.executable, __file__, *argv, "--only", side, "--wait-quiet", "0"]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _print(label: str, r: dict[str, Any]) -> None:
    times = " / ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
    print(f"{label:<26} {r['tokens_per_second']:>8.1f} tok/s  ({r['tokens']} tokens in "
          f"{r['seconds']:.1f} s of training, {r['precision']})  dev accuracy "
          f"{r['dev_accuracy']:.3f}\n{'':<26} wall clock: {times}; process "
          f"{r['process_seconds']:.1f} s  [other processes: {r['foreign_cpu']:.0%} of the CPU]",
          flush=True)


if __name__ == "__main__":
    main()
