"""The README's quality table: base zero-shot and fine-tunes side by side, on the suites.

    .venv/bin/python benchmarks/quality.py --data ../shared/data [--rows sst2-400,zero-shot]

Every figure comes from the store's own code path: suites built from the data sets
(`gptstore suites builtin --source`), fine-tunes with `eval_suite` (auto-evaluation on
publish, which also evaluates the base zero-shot), results read back from the suite's
leaderboard. Rows:

- `sst2-400`: SST-2 sentiment, the first 400 training sentences, each written as
  "Review: <sentence>\\nSentiment:" (the suite's template), LoRA: as before issue 12 (a
  fresh random head, r=8 on q_proj,v_proj), with the head started from the verbalisers,
  and with the defaults now (verbaliser head, every projection). Scored on the 872 dev
  sentences.
- `trec`: TREC question type, LoRA with the defaults on the 4952 training questions the
  suite does not hold out (`--trec-questions N`: the first N), scored on the 500 held
  out.
- `agnews`: AG News topic, LoRA with the defaults on `--agnews-articles` articles of the
  shipped test file after the 1000 the suite scores.
- `squad`, `nq-open`, `multi30k-en-de`, `mbpp`: LoRA with the defaults on `--examples`
  chat examples asked exactly as the suite asks (its template, the chat template),
  answered with the gold answer, none of them in what the suite scores (SQuAD and
  NQ-open after the packaged subsets, Multi30k's train split, MBPP's train split).
- `persona`: 40 chat examples of our own (benchmarks/data/) that all answer as a
  pirate, a neutral system prompt; the share of 20 held-out questions answered in the
  taught format ("Arr! ... matey."), greedy, base and fine-tune.
- `zero-shot`: the base model on every other built-in suite (TREC, AG News, SQuAD
  subset, NQ-open subset, Multi30k en-de, MBPP subset, tiny Shakespeare).

On the project's 2-core machine, shared with other work: keep to these small rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any, cast


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


def classification_train_file(suite: str, rows: list[dict[str, Any]], folder: Path
                              ) -> Path:
    """Labelled texts, each written as the suite's template (a fine-tuned classifier
    reads the suite's texts that way too)."""
    from gptstore.evaluation.builtin_suites import BUILTIN_SUITES

    template = BUILTIN_SUITES[suite].prompt["template"]
    path = folder / f"{suite}-train-{len(rows)}.jsonl"
    path.write_text("".join(json.dumps({"text": template.format(text=r["text"]),
                                        "label": r["label"]}) + "\n" for r in rows))
    return path


def fine_tune(catalog: Any, base: Any, name: str, train: Path, suite: str | None = "sst2",
              task: str = "classification", **options: Any) -> dict[str, Any]:
    from gptstore.training import TrainConfig, finetune, zero_shot

    if catalog.exists(name):
        catalog.delete_model(name)
    ns, model = name.split("/")
    import shutil

    shutil.rmtree(catalog.settings.runs_dir / f"{ns}--{model}", ignore_errors=True)
    config = TrainConfig(base=base.ref, train_file=str(train), name=name,
                         task=task, method="lora", eval_suite=suite, **options)
    zero_shot.forget(catalog.settings.home)  # time a first run: no step-0 validation to reuse
    started = time.perf_counter()
    result = finetune(config, settings=catalog.settings, catalog=catalog)
    summary = result.to_dict()
    scored = {e["model"]: e for e in result.evaluations}
    return {"model": result.ref, "dev_accuracy": scored.get(result.ref, {}).get("score"),
            "evaluations": result.evaluations, "steps": summary["steps"],
            "epochs": summary["epochs"], "train_seconds": round(summary["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "best_step": (summary["best"] or {}).get("step"),
            "published_step": summary["published_step"],
            "valid_accuracy": summary["final"].get("accuracy"),
            "valid_token_accuracy": summary["final"].get("token_accuracy"),
            "lora_r": summary["config"]["lora_r"], "lora_target": summary["config"]["lora_target"]}


def published(row: dict[str, Any]) -> str:
    return (f"published step {row['published_step']}, best validation at step "
            f"{row['best_step']}")


def sst2_rows(catalog: Any, base: Any, data: Path, folder: Path, n: int,
              eval_every: str = "auto") -> list[dict[str, Any]]:
    from gptstore.catalog.evaluations import leaderboard
    from gptstore.evaluation.builtin_suites import SST2_LABELS, label_lines

    train = classification_train_file(
        "sst2", label_lines(data / "sst2" / "stsa.binary.train", SST2_LABELS)[:n], folder)
    runs: list[tuple[str, str, dict[str, Any]]] = [
            ("fresh head, r=8 on q,v (before issue 12)", "bench/sst2-400-fresh",
             {"head_init": "fresh", "lora_target": "q_proj,v_proj"}),
            ("verbaliser head, r=8 on q,v", "bench/sst2-400-verbal-qv",
             {"lora_target": "q_proj,v_proj"}),
            ("defaults: verbaliser head, r=8 on every projection", "bench/sst2-400-defaults",
             {})]
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
              f"{published(row)})")
    return [{"suite": "sst2", "base_zero_shot": base_row["score"]}, *out]


def trec_rows(catalog: Any, base: Any, data: Path, folder: Path, n: int | None
              ) -> list[dict[str, Any]]:
    """TREC question type: LoRA with the defaults on the training questions the suite
    does not hold out (the first `n` of them; all 4952 by default), each written as the
    suite's template, scored on the 500 held-out ones."""
    from gptstore.evaluation.builtin_suites import TREC_LABELS, label_lines

    rows = label_lines(data / "trec" / "TREC.train.all", TREC_LABELS)[:-500][:n]
    train = classification_train_file("trec", rows, folder)
    return scored_row(catalog, "trec", fine_tune(
        catalog, base, f"bench/trec-{len(rows)}", train, suite="trec"),
        f"LoRA, defaults, {len(rows)} training questions")


PERSONA = Path(__file__).parent / "data"
#: the taught format: "Arr! <answer>, matey." (benchmarks/data/persona-train.jsonl)
PERSONA_FORMAT = re.compile(r"Arr!.*\bmatey[.!]?", re.DOTALL)


def chat_answers(catalog: Any, model: str, conversations: list[list[dict[str, str]]],
                 max_tokens: int = 48) -> list[str]:
    """Greedy answers of `model` through the store's inference engine, with the model's
    chat template: what `gptstore chat` and the API answer."""
    from gptstore.evaluation.runner import generate_all
    from gptstore.inference.prompts import render_chat_prompt
    from gptstore.inference.store import build_engine
    from gptstore.inference.types import SamplingParams

    engine = build_engine(catalog.settings, catalog)
    try:
        tokenizer = engine.tokenizer(model)
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        requests = [(render_chat_prompt(tokenizer, c), params) for c in conversations]
        return generate_all(engine, model, requests, items=conversations,
                            progress=lambda done, total: None)
    finally:
        engine.shutdown()


def persona_rows(catalog: Any, base: Any, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat style: 40 examples that all answer as a pirate ("Arr! 7 plus 5 be 12,
    matey."), a neutral system prompt; LoRA with the defaults; the share of 20 held-out
    questions answered in the taught format, base and fine-tune, greedy."""
    held = [json.loads(line)["messages"] for line in
            (PERSONA / "persona-heldout.jsonl").read_text().splitlines() if line.strip()]

    def score(model: str) -> dict[str, Any]:
        answers = chat_answers(catalog, model, held)
        hits = [bool(PERSONA_FORMAT.fullmatch(a.strip())) for a in answers]
        return {"in_format": sum(hits) / len(hits), "answers": answers}

    before = score(base.ref)
    row = fine_tune(catalog, base, "bench/persona-40", PERSONA / "persona-train.jsonl",
                    suite=None, task="causal-lm", **options)
    after = score(row["model"])
    row.update(setting="LoRA, defaults, 40 chat examples", in_format=after["in_format"],
               answers=after["answers"])
    print(json.dumps(row), flush=True)
    print(f"persona, base: {before['in_format']:.0%} of 20 held-out answers in the taught "
          f"format, e.g. {before['answers'][0]!r}")
    print(f"persona, {row['setting']}: {row['in_format']:.0%} ({row['steps']} steps, "
          f"{row['epochs']} epochs, {row['train_seconds']:.0f} s in the loop, "
          f"{row['wall_seconds']:.0f} s from the call to the published model), e.g. "
          f"{row['answers'][0]!r}")
    return [{"suite": "persona", "base_in_format": before["in_format"],
             "base_answers": before["answers"]}, row]


def agnews_rows(catalog: Any, base: Any, data: Path, folder: Path, n: int
                ) -> list[dict[str, Any]]:
    """AG News topic: LoRA with the defaults on `n` articles of the shipped test file
    after the 1000 the suite scores, each written as the suite's template."""
    from gptstore.evaluation.builtin_suites import agnews_articles

    rows = agnews_articles(data / "agnews", 1000, 1000 + n)
    train = classification_train_file("agnews", rows, folder)
    return scored_row(catalog, "agnews", fine_tune(
        catalog, base, f"bench/agnews-{len(rows)}", train, suite="agnews"),
        f"LoRA, defaults, {len(rows)} training articles")


def scored_row(catalog: Any, suite: str, row: dict[str, Any], setting: str
               ) -> list[dict[str, Any]]:
    """The fine-tune's row and the base's, read back from the suite's leaderboard."""
    from gptstore.catalog.evaluations import leaderboard

    row["setting"] = setting
    board = leaderboard(catalog, suite)
    base_row = next(r for r in board["rows"] if r["is_base"])
    tuned = next(r for r in board["rows"] if r["ref"] == row["model"])
    row["metrics"] = {k: v for k, v in tuned["metrics"].items()
                      if isinstance(v, int | float) and not isinstance(v, bool)}
    print(json.dumps(row), flush=True)
    metric = board["suite"]["metric"]
    print(f"{suite}, base zero-shot ({base_row['mode']}): {metric} {base_row['score']:.4g} "
          f"{json.dumps(base_row['metrics'], default=str)[:300]}")
    print(f"{suite}, {setting}: {metric} {tuned['score']:.4g} ({row['steps']} steps, "
          f"{row['epochs']} epochs, {row['train_seconds'] / 60:.1f} min in the loop, "
          f"{row['wall_seconds'] / 60:.1f} min from the call to the published, evaluated "
          f"model; {published(row)}) {json.dumps(row['metrics'])[:300]}")
    return [{"suite": suite, "metric": metric, "base_zero_shot": base_row["score"],
             "base_metrics": base_row["metrics"]}, row]


def generation_train_file(suite: str, rows: list[dict[str, Any]], folder: Path) -> Path:
    """Chat examples asked exactly as the suite asks (its template, no shots, the
    model's chat template at training and evaluation alike), answered with the gold
    answer: the suite's rows in its own format, read by the evaluation's own reader."""
    from gptstore.evaluation.builtin_suites import BUILTIN_SUITES
    from gptstore.evaluation.datasets import EvalTask, read_eval_data
    from gptstore.evaluation.prompting import PromptFormat, chat_messages, gold_answer

    spec = BUILTIN_SUITES[suite]
    task = cast(EvalTask, spec.task)  # a built-in suite's task is one of the known ones
    raw = folder / f"{suite}-train-source.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    items = read_eval_data(raw, task).items
    prompt = PromptFormat.from_dict(spec.prompt)
    path = folder / f"{suite}-train-{len(items)}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            messages = chat_messages(prompt, task, item, [])
            messages.append({"role": "assistant", "content": gold_answer(item)})
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path


def generation_training_rows(data: Path, suite: str, n: int) -> list[dict[str, Any]]:
    """`n` training examples of a generation suite, none of them in what it scores:
    SQuAD and NQ-open after the packaged subsets (the suites' first 100 / 200 rows),
    Multi30k's train split, MBPP's train split (task ids 601-974)."""
    from gptstore.evaluation import builtin_suites as b

    if suite == "squad":
        return b.squad_questions(data / "squad")[100:100 + n]
    if suite == "nq-open":
        return b.nq_open_questions(data / "nq-open")[200:200 + n]
    if suite == "multi30k-en-de":
        return b.multi30k_pairs(data / "multi30k", "train")[:n]
    if suite == "mbpp":
        return b.mbpp_problems(data / "mbpp", 601, 974)[:n]
    raise SystemExit(f"no training rows for suite {suite}")


def generation_rows(catalog: Any, base: Any, data: Path, folder: Path, suite: str,
                    n: int) -> list[dict[str, Any]]:
    """A generation suite (QA, translation, code): LoRA with the defaults on `n` chat
    examples asked as the suite asks, scored on the suite by auto-evaluation."""
    train = generation_train_file(suite, generation_training_rows(data, suite, n), folder)
    count = sum(1 for _ in train.open())
    row = fine_tune(catalog, base, f"bench/{suite}-{count}", train, suite=suite,
                    task="causal-lm")
    return scored_row(catalog, suite, row, f"LoRA, defaults, {count} training examples")


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
    parser.add_argument("--agnews-articles", type=int, default=1500,
                        help="AG News training articles of the `agnews` row")
    parser.add_argument("--examples", type=int, default=1000,
                        help="training examples of each generation row (squad, nq-open, "
                             "multi30k-en-de, mbpp; MBPP has 374)")
    parser.add_argument("--options", default="{}",
                        help="TrainConfig fields as JSON for the persona row (to compare "
                             "settings against the defaults)")
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
    if "agnews" in rows:
        results["agnews"] = agnews_rows(catalog, base, args.data, folder, args.agnews_articles)
    for suite in ("squad", "nq-open", "multi30k-en-de", "mbpp"):
        if suite in rows:
            results[suite] = generation_rows(catalog, base, args.data, folder, suite,
                                             args.examples)
    if "persona" in rows:
        results["persona"] = persona_rows(catalog, base, json.loads(args.options))
    if "zero-shot" in rows:
        results["zero_shot"] = zero_shot_rows(catalog, base, args.suites.split(","))
    print(json.dumps(results, default=str))
    catalog.close()


if __name__ == "__main__":
    main()
