"""The README's quality table: base zero-shot and fine-tunes side by side, on the suites.

    .venv/bin/python benchmarks/quality.py --data ../shared/data [--rows sst2-400,zero-shot]

Every figure comes from the store's own code path: suites built from the data sets
(`gptstore suites builtin --source`), fine-tunes with `eval_suite` (auto-evaluation on
publish, which also evaluates the base zero-shot), results read back from the suite's
leaderboard. Rows:

- `sst2-400`: SST-2 sentiment, the first 400 training sentences, each written as
  "Review: <sentence>\\nSentiment:" (the suite's template), LoRA with the defaults; once
  with a fresh random head (`--head-init fresh`, the behaviour before issue 12), once
  with the head started from the verbalisers (the default now), and once with r=16 on
  every projection (the README's full-data setting). Scored on the 872 dev sentences.
- `trec`: TREC question type, LoRA with the defaults on the 4952 training questions the
  suite does not hold out (`--trec-questions N`: the first N), scored on the 500 held
  out.
- `zero-shot`: the base model on every other built-in suite (TREC, AG News, SQuAD
  subset, NQ-open subset, Multi30k en-de, MBPP subset, tiny Shakespeare).

On the project's 2-core machine, shared with other work: keep to these small rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

ALL_PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
TEMPLATE = "Review: {text}\nSentiment:"


def open_store(home: Path) -> tuple[Any, Any]:
    os.environ["GPTSTORE_HOME"] = str(home)
    from gptstore.catalog.importers import BUILTIN_NAME, ensure_builtin
    from gptstore.catalog.repository import Catalog
    from gptstore.settings import Settings

    catalog = Catalog(Settings(home=home))
    if not catalog.exists(BUILTIN_NAME):
        print(f"pulling {BUILTIN_NAME} into {home} (first run only)...", flush=True)
        ensure_builtin(catalog)
    return catalog, catalog.resolve(BUILTIN_NAME)


def sst2_train_file(data: Path, folder: Path, n: int) -> Path:
    from gptstore.evaluation.builtin_suites import SST2_LABELS

    rows = []
    for line in (data / "sst2" / "stsa.binary.train").read_text().splitlines()[:n]:
        label, _, text = line.partition(" ")
        rows.append({"text": TEMPLATE.format(text=text.strip()), "label": SST2_LABELS[label]})
    path = folder / f"sst2-train-{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fine_tune(catalog: Any, base: Any, name: str, train: Path, suite: str = "sst2",
              **options: Any) -> dict[str, Any]:
    from gptstore.training import TrainConfig, finetune

    if catalog.exists(name):
        catalog.delete_model(name)
    ns, model = name.split("/")
    import shutil

    shutil.rmtree(catalog.settings.runs_dir / f"{ns}--{model}", ignore_errors=True)
    config = TrainConfig(base=base.ref, train_file=str(train), name=name,
                         task="classification", method="lora", eval_suite=suite, **options)
    started = time.perf_counter()
    result = finetune(config, settings=catalog.settings, catalog=catalog)
    summary = result.to_dict()
    scored = {e["model"]: e for e in result.evaluations}
    return {"model": result.ref, "dev_accuracy": scored[result.ref].get("score"),
            "evaluations": result.evaluations, "steps": summary["steps"],
            "epochs": summary["epochs"], "train_seconds": round(summary["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "best_step": (summary["best"] or {}).get("step"),
            "valid_accuracy": summary["final"].get("accuracy"),
            "lora_r": summary["config"]["lora_r"], "lora_target": summary["config"]["lora_target"]}


def sst2_rows(catalog: Any, base: Any, data: Path, folder: Path, n: int,
              eval_every: str = "auto") -> list[dict[str, Any]]:
    from gptstore.catalog.evaluations import leaderboard

    train = sst2_train_file(data, folder, n)
    runs = [("fresh head, defaults (before)", "bench/sst2-400-fresh", {"head_init": "fresh"}),
            ("verbaliser head, defaults", "bench/sst2-400-verbal", {}),
            ("verbaliser head, r=16 every projection", "bench/sst2-400-r16-all",
             {"lora_r": 16, "lora_target": ALL_PROJECTIONS})]
    out = []
    for label, name, options in runs:
        if eval_every != "auto":
            options = {**options, "eval_every": int(eval_every)}
        row = fine_tune(catalog, base, name, train, **options)
        row["setting"] = label
        print(json.dumps(row), flush=True)
        out.append(row)
    board = leaderboard(catalog, "sst2")
    base_row = next(r for r in board["rows"] if r["is_base"])
    print(f"SST-2 dev, base zero-shot ({base_row['mode']}): {base_row['score']:.3f}")
    for row in out:
        print(f"SST-2 dev, {row['setting']}: {row['dev_accuracy']:.3f} "
              f"({row['steps']} steps, {row['train_seconds'] / 60:.1f} min in the loop, "
              f"{row['wall_seconds'] / 60:.1f} min with validation and evaluation; "
              f"best step {row['best_step']})")
    return [{"suite": "sst2", "base_zero_shot": base_row["score"]}, *out]


def trec_rows(catalog: Any, base: Any, data: Path, folder: Path, n: int | None
              ) -> list[dict[str, Any]]:
    """TREC question type: LoRA with the defaults on the training questions the suite
    does not hold out (the first `n` of them; all 4952 by default), each written as the
    suite's template, scored on the 500 held-out ones."""
    from gptstore.catalog.evaluations import leaderboard
    from gptstore.evaluation.builtin_suites import TREC_LABELS

    lines = (data / "trec" / "TREC.train.all").read_text(errors="replace").splitlines()
    rows = []
    for line in [line for line in lines if line.strip()][:-500][:n]:
        label, _, text = line.partition(" ")
        rows.append({"text": f"Question: {text.strip()}\nType:", "label": TREC_LABELS[label]})
    train = folder / f"trec-train-{len(rows)}.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    row = fine_tune(catalog, base, f"bench/trec-{len(rows)}", train, suite="trec")
    row["setting"] = f"LoRA, defaults, {len(rows)} training questions"
    print(json.dumps(row), flush=True)
    board = leaderboard(catalog, "trec")
    base_row = next(r for r in board["rows"] if r["is_base"])
    print(f"TREC held-out 500, base zero-shot ({base_row['mode']}): {base_row['score']:.3f}")
    print(f"TREC held-out 500, {row['setting']}: {row['dev_accuracy']:.3f} ({row['steps']} "
          f"steps, {row['epochs']} epochs, {row['train_seconds'] / 60:.1f} min in the loop, "
          f"{row['wall_seconds'] / 60:.1f} min from the call to the published, evaluated "
          f"model; best step {row['best_step']})")
    return [{"suite": "trec", "base_zero_shot": base_row["score"]}, row]


def zero_shot_rows(catalog: Any, base: Any, suites: list[str]) -> list[dict[str, Any]]:
    from gptstore.evaluation.suites import evaluate_on_suite

    out = []
    for suite in suites:
        started = time.perf_counter()
        report, result = evaluate_on_suite(catalog, base.ref, suite)
        row = {"suite": suite, "mode": report.mode, "metric": result.score,
               "examples": report.examples, "seconds": round(time.perf_counter() - started, 1),
               "metrics": {k: v for k, v in report.metrics.items()
                           if isinstance(v, int | float) and not isinstance(v, bool)}}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--home", type=Path, default=Path("/tmp/gptstore-quality"))
    parser.add_argument("--rows", default="sst2-400,zero-shot")
    parser.add_argument("--train-sentences", type=int, default=400)
    parser.add_argument("--trec-questions", type=int, default=None,
                        help="TREC training questions of the `trec` row (default: all 4952)")
    parser.add_argument("--eval-every", default="auto",
                        help="validate every N steps (the README's rerun: 14)")
    parser.add_argument("--suites", default="trec,agnews,squad,nq-open,multi30k-en-de,mbpp,"
                                            "tinyshakespeare")
    args = parser.parse_args()

    import tempfile

    from gptstore.evaluation.suites import install_builtin

    catalog, base = open_store(args.home)
    install_builtin(catalog, ["sst2", "trec", "agnews", "multi30k-en-de"], source=args.data)
    install_builtin(catalog, ["squad", "nq-open", "mbpp", "tinyshakespeare"])  # packaged
    folder = Path(tempfile.mkdtemp(prefix="quality-"))
    results: dict[str, Any] = {}
    rows = args.rows.split(",")
    if "sst2-400" in rows:
        results["sst2"] = sst2_rows(catalog, base, args.data, folder, args.train_sentences,
                                    args.eval_every)
    if "trec" in rows:
        results["trec"] = trec_rows(catalog, base, args.data, folder, args.trec_questions)
    if "zero-shot" in rows:
        results["zero_shot"] = zero_shot_rows(catalog, base, args.suites.split(","))
    print(json.dumps(results, default=str))
    catalog.close()


if __name__ == "__main__":
    main()
