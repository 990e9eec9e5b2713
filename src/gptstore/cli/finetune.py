"""`gptstore finetune` and `gptstore classify` (added to the root app by
`register(app)`).

Owns only the presentation: the flags build one `TrainConfig` (help texts come from its
fields), a rich progress bar follows the run's events (loss, tokens/s, ETA) on stderr,
and the run ends with a summary table, or with one JSON object on stdout with `--json`.
torch and transformers are imported inside the commands, so `gptstore --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gptstore.cli.common import console, open_catalog, print_json, settings
from gptstore.cli.run import Local
from gptstore.training.config import AUTO, TrainConfig, field_default, field_help

err_console = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _h(name: str) -> str:
    return field_help(name)


#: every flag's default is TrainConfig's own (stated once, in config.py)
_d = field_default


def _auto(value: str) -> Any:
    """Typer gives strings for auto-able options: 'auto' stays, numbers are parsed."""
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value  # TrainConfig names the field in its error


def finetune(
    base: Annotated[str, typer.Option(help=_h("base"))],
    train: Annotated[Path, typer.Option(help=_h("train_file"))],
    name: Annotated[str, typer.Option(help=_h("name"))],
    valid: Annotated[Path | None, typer.Option(help=_h("valid_file"))] = None,
    task: Annotated[str, typer.Option(help=_h("task"))] = _d("task"),
    method: Annotated[str, typer.Option(help=_h("method"))] = _d("method"),
    epochs: Annotated[str, typer.Option(help=_h("epochs"))] = _d("epochs"),
    lr: Annotated[str, typer.Option("--lr", help=_h("learning_rate"))] = _d("learning_rate"),
    batch_size: Annotated[str, typer.Option(help=_h("batch_size"))] = _d("batch_size"),
    grad_accum: Annotated[int, typer.Option(help=_h("grad_accum_steps"))] = _d("grad_accum_steps"),
    weight_decay: Annotated[float, typer.Option(help=_h("weight_decay"))] = _d("weight_decay"),
    dropout: Annotated[str, typer.Option(help=_h("dropout"))] = _d("dropout"),
    optimizer: Annotated[str, typer.Option(help=_h("optimizer"))] = _d("optimizer"),
    momentum: Annotated[float, typer.Option(help=_h("momentum"))] = _d("momentum"),
    schedule: Annotated[str, typer.Option(help=_h("schedule"))] = _d("schedule"),
    warmup: Annotated[float, typer.Option(help=_h("warmup_ratio"))] = _d("warmup_ratio"),
    max_grad_norm: Annotated[float, typer.Option(help=_h("max_grad_norm"))] = _d("max_grad_norm"),
    ema_decay: Annotated[float, typer.Option(help=_h("ema_decay"))] = _d("ema_decay"),
    head_init: Annotated[str, typer.Option(help=_h("head_init"))] = _d("head_init"),
    lora_r: Annotated[int, typer.Option(help=_h("lora_r"))] = _d("lora_r"),
    lora_alpha: Annotated[str, typer.Option(help=_h("lora_alpha"))] = _d("lora_alpha"),
    lora_dropout: Annotated[float, typer.Option(help=_h("lora_dropout"))] = _d("lora_dropout"),
    loraplus_lr_ratio: Annotated[float, typer.Option(help=_h("loraplus_lr_ratio"))] = _d(
        "loraplus_lr_ratio"),
    lora_target: Annotated[str, typer.Option(help=_h("lora_target"))] = _d("lora_target"),
    max_length: Annotated[str, typer.Option(help=_h("max_length"))] = _d("max_length"),
    valid_split: Annotated[str, typer.Option(help=_h("valid_split"))] = _d("valid_split"),
    format: Annotated[str | None, typer.Option("--format", help=_h("format"))] = None,
    eval_every: Annotated[str, typer.Option(help=_h("eval_every"))] = _d("eval_every"),
    metric: Annotated[str, typer.Option(help=_h("metric"))] = _d("metric"),
    patience: Annotated[int, typer.Option(help=_h("early_stopping_patience"))] = _d(
        "early_stopping_patience"),
    save_every: Annotated[str, typer.Option(help=_h("save_every"))] = _d("save_every"),
    max_steps: Annotated[int | None, typer.Option(help=_h("max_steps"))] = None,
    seed: Annotated[int, typer.Option(help=_h("seed"))] = _d("seed"),
    precision: Annotated[str, typer.Option(help=_h("precision"))] = _d("precision"),
    threads: Annotated[int | None, typer.Option(help=_h("threads"))] = None,
    shards: Annotated[str, typer.Option(help=_h("shards"))] = _d("shards"),
    run_dir: Annotated[Path | None, typer.Option(help=_h("run_dir"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help=_h("resume"))] = False,
    description: Annotated[str, typer.Option(help=_h("description"))] = _d("description"),
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    license: Annotated[str | None, typer.Option(help=_h("license"))] = None,
    eval_suite: Annotated[str | None, typer.Option(help=_h("eval_suite"))] = None,
    visibility: Annotated[str, typer.Option(help=_h("visibility"))] = _d("visibility"),
    owner: Annotated[str | None, typer.Option(
        "--owner", help="The user or organisation that owns the new model's namespace.")
    ] = None,
    submit: Annotated[bool, typer.Option(
        "--submit", help="Queue a job for a worker (`gptstore serve` or `gptstore "
        "worker`) instead of training here; prints the job id.")] = False,
    follow: Annotated[bool, typer.Option(
        "--follow", help="With --submit: follow the job's events until it ends.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Fine-tune a store model on a training file and publish the result."""
    config = TrainConfig(
        base=base, train_file=str(train), name=name,
        valid_file=str(valid) if valid else None, task=task, method=method,
        epochs=_auto(epochs), learning_rate=_auto(lr), batch_size=_auto(batch_size),
        grad_accum_steps=grad_accum, weight_decay=weight_decay, dropout=_auto(dropout),
        optimizer=optimizer, momentum=momentum, schedule=schedule, warmup_ratio=warmup,
        max_grad_norm=max_grad_norm, ema_decay=ema_decay, head_init=head_init, lora_r=lora_r,
        lora_alpha=_auto(lora_alpha),
        lora_dropout=lora_dropout, loraplus_lr_ratio=loraplus_lr_ratio,
        lora_target=lora_target, max_length=_auto(max_length),
        valid_split=_auto(valid_split), format=format, eval_every=_auto(eval_every),
        metric=metric, early_stopping_patience=patience, save_every=_auto(save_every),
        max_steps=max_steps, seed=seed, precision=precision, threads=threads,
        shards=_auto(shards),
        run_dir=str(run_dir) if run_dir else None, resume=resume, description=description,
        tags=tag or [], license=license, eval_suite=eval_suite, visibility=visibility)
    if owner is not None:
        from gptstore.cli.models import claim_owner

        with open_catalog() as catalog:
            claim_owner(catalog, name, owner)
    if submit:
        from gptstore.cli.jobs import submit as submit_job

        job_id = submit_job(config, follow=follow)
        if as_json:
            print_json({"job": job_id})
        else:
            console.print(job_id)
        return
    from gptstore.training.loop import finetune as run_finetune

    with ProgressView() as view, open_catalog() as catalog:
        result = run_finetune(config, settings=settings(), catalog=catalog,
                              callbacks=[view])
        from gptstore.cli.models import audit

        audit(catalog, "publish", result.ref, {"base": config.base, "how": "finetune",
                                               "visibility": visibility})
    if as_json:
        print_json(result.to_dict())
        return
    _summary(result)


class ProgressView:
    """A rich progress bar on stderr fed by the run's events."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
            TextColumn("{task.fields[valid]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err_console, transient=False)
        self.task_id: Any = None

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        if self.task_id is None:
            self.task_id = self.progress.add_task("training", total=event.total_steps,
                                                  completed=event.step, loss="-", speed="",
                                                  valid="")
        values = event.values
        if event.kind == "step":
            self.progress.update(self.task_id, completed=event.step,
                                 loss=f"{values['loss']:.4f}",
                                 speed=f"{values['tokens_per_second']:.0f} tok/s")
        elif event.kind == "eval":
            shown = {k: v for k, v in values.items() if k in ("loss", "accuracy", "perplexity")}
            text = " ".join(f"{k} {v:.4g}" for k, v in shown.items())
            if values.get("reused"):  # the zero-shot floor, as an earlier run computed it
                text += " (reused)"
            self.progress.update(self.task_id, valid=f"valid: {text}")
        elif event.kind == "end":
            self.progress.update(self.task_id, description="published")


def _summary(result: Any) -> None:
    run = result.record
    table = Table(title=f"published {result.ref}", show_header=False)
    rows = [("task / method", f"{run.task} / {run.method} ({run.kind})"),
            ("examples (train / valid)", f"{run.train_data.examples} / "
             f"{run.valid_data.examples if run.valid_data else 0}"),
            ("steps / epochs", f"{run.steps} / {run.epochs}"),
            ("training time", f"{run.train_seconds:.1f} s in steps, "
             f"{run.timings.get('total', 0.0):.1f} s in all"),
            ("wall clock", " / ".join(
                f"{label} {run.timings[key]:.1f} s" for key, label in (
                    ("prepare", "data"), ("load_model", "load"), ("train", "train"),
                    ("validation", "eval"), ("publish", "publish"))
                if key in run.timings)),
            ("throughput", f"{run.tokens_per_second:.0f} non-padding tokens/s"),
            ("padding", f"{run.padding_fraction:.1%} of token slots"),
            ("stopped early", "yes" if run.stopped_early else "no")]
    for key, value in run.final.items():
        rows.append((f"valid {key}", f"{value:.4g}"))
    if run.published:
        rows.append(("published weights", f"step {run.published_step}: "
                     f"{run.published['chosen_by']}"))
    rows.append(("logs", f"{run.run_dir} (tensorboard --logdir {run.run_dir})"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def classify(
    name: Annotated[str, typer.Argument(help="Classifier: namespace/name[@VERSION].")],
    texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
    local: Local = False,
    as_json: JsonFlag = False,
) -> None:
    """Classify texts with a fine-tuned classifier: label and probabilities.

    Runs on the same inference engine as the HTTP API's /v1/classifications: the running
    `gptstore serve` of this store where there is one (as `generate` and `chat`), else
    in this process."""
    from gptstore.api.runtime import running_server

    with open_catalog() as catalog:
        version = catalog.resolve(name)
        labels = _label_order(catalog, version)
    url = None if local else running_server(settings().home)
    scored: list[dict[str, float]] | None = None
    if url is not None:
        from gptstore.cli.remote import Refused
        from gptstore.cli.remote import classify as classify_remote

        try:
            scored = classify_remote(url, name, texts)
        except Refused:  # wants another key, or gone since the probe: our own engine
            scored = None
    if scored is None:
        from gptstore.cli.run import local_engine

        with local_engine() as engine:
            scored = [dict(probs) for probs in engine.classify(name, texts)]
    if scored and not labels:
        labels = list(scored[0])
    results = [{"text": text, "label": max(probs, key=probs.__getitem__),
                "probabilities": {label: probs[label] for label in labels}}
               for text, probs in zip(texts, scored, strict=True)]
    if as_json:
        print_json({"model": version.ref, "results": results})
        return
    table = Table("text", "label", *labels, title=version.ref)
    for row in results:
        probs_text = [f"{row['probabilities'][n]:.3f}" for n in labels]
        table.add_row(escape(row["text"][:60]), f"[bold]{escape(row['label'])}[/]",
                      *probs_text)
    console.print(table)


def _label_order(catalog: Any, version: Any) -> list[str]:
    """The classifier's labels in its outputs' order (the table's columns), read from the
    store: the lineage's, else the config's id2label; empty when neither says."""
    import json
    from types import SimpleNamespace

    from gptstore.inference.loader import label_names_of

    config: dict[str, Any] = {}
    if version.kind == "full":
        config = json.loads(catalog.read_file(version, "config.json"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return label_names_of(version, SimpleNamespace(id2label=id2label)) or []


def register(app: typer.Typer) -> None:
    """Add `finetune` and `classify` to the root app (`eval` is cli/evaluate.py)."""
    app.command("finetune")(finetune)
    app.command("classify")(classify)
