"""The fine-tuning loop: from a `TrainConfig` to a published store model.

`finetune(config)` runs the steps of `FineTuneRun.run` in order:

0. store checks: the new name is free, the base exists, the run folder is writable,
   a checkpoint is there exactly when `resume` says so;
1. data: the base's tokenizer, the training file (refused with its errors listed by
   line), the validation file or a seeded (stratified) split, `auto` values resolved;
2. model: the task's model in the method's dtype (bf16 frozen weights on CPUs with
   fast bf16, fp32 trainable masters), wrapped by the method, dropout set;
3. optimiser: AdamW (decoupled decay) or SGD with momentum; decay only on matrices
   (never biases, norms or other 1-D weights); the learning rate is set every step
   from warm-up + linear / cosine decay (a pure function of the step: nothing to
   restore on resume);
4. resume: weights, optimiser, RNG and loop position from the last checkpoint;
5. train: length-grouped micro-batches (the plan of an epoch depends on seed and epoch
   only), gradient accumulation over windows of micro-batches, bf16 autocast, gradient
   clipping, validation every N steps and at epoch ends, the best weights kept,
   early stopping with patience, checkpoints every N steps;
6. publish (`publish.py`) the best weights with lineage, metrics and curves, then
   drop the run's checkpoints (its logs stay).

Owns the order of things and the run's state; the task (what is predicted), the method
(what trains), checkpoints, logs and publishing are in their own modules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptstore.catalog.names import parse_ref
from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.data import default_max_length, detect_format, load_training_data
from gptstore.data.batching import padding_stats, plan_batches
from gptstore.data.types import EncodedExample
from gptstore.errors import Conflict, InvalidRequest, NotFound, StorageError
from gptstore.settings import Settings
from gptstore.training import checkpoint as ckpt
from gptstore.training.config import (
    AUTO,
    TrainConfig,
    auto_valid_split,
    resolve_auto,
    steps_per_epoch,
)
from gptstore.training.evaluate import evaluate_examples, extract_features
from gptstore.training.logs import Callback, RunLog, TrainEvent
from gptstore.training.methods import get_method, trainable_parameters
from gptstore.training.parallel import ShardRunner, ShardWork, auto_shards, split_rows
from gptstore.training.tasks import ClassificationTask, amp, get_task

#: fields that may differ between a run and its resume (they do not change the result)
RESUME_FREE = {"resume", "threads", "description", "tags", "license", "run_dir"}


@dataclass
class FinetuneResult:
    """What `finetune` returns (and `gptstore finetune --json` prints)."""

    name: str
    ref: str
    task: str
    method: str
    kind: str
    train_tokens: int
    train_seconds: float
    tokens_per_second: float
    steps: int
    epochs: float
    train_examples: int
    valid_examples: int
    final: dict[str, float]
    best: dict[str, Any] | None
    last: dict[str, Any] | None
    stopped_early: bool
    padding_fraction: float
    run_dir: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def finetune(config: TrainConfig, *, settings: Settings | None = None,
             catalog: Catalog | None = None, callbacks: Sequence[Callback] = ()
             ) -> FinetuneResult:
    """Fine-tune `config.base` on `config.train_file` and publish `config.name`."""
    settings = settings or (catalog.settings if catalog is not None else Settings())
    own = catalog is None
    catalog = catalog or Catalog(settings)
    try:
        return FineTuneRun(config, settings, catalog, callbacks).run()
    finally:
        if own:
            catalog.close()


def default_run_dir(settings: Settings, name: str) -> Path:
    ref = parse_ref(name, allow_version=False)
    return settings.runs_dir / f"{ref.namespace}--{ref.name}"


def lr_at(step: int, total: int, warmup: int, peak: float, schedule: str) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then decay."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if schedule == "constant" or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


class FineTuneRun:
    """One run of `finetune`: its state, built step by step (see the module docstring)."""

    def __init__(self, config: TrainConfig, settings: Settings, catalog: Catalog,
                 callbacks: Sequence[Callback]) -> None:
        self.cfg = config
        self.settings = settings
        self.catalog = catalog
        self.callbacks = callbacks
        self.method = get_method(config.method)
        self.state = ckpt.TrainState()
        self.resumed_from: Path | None = None

    def run(self) -> FinetuneResult:
        threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> FinetuneResult:
        self._check_store()
        self._load_data()
        self._build_model()
        self._build_optimizer()
        self._resume()
        self.log = RunLog(self.run_dir, resume_step=self.state.step if self.resumed_from
                          else None, callbacks=self.callbacks)
        try:
            self._train()
            return self._publish()
        finally:
            self.log.close()

    # -- 0. store checks ---------------------------------------------------------------

    def _check_store(self) -> None:
        cfg = self.cfg
        if self.catalog.exists(cfg.name):
            raise Conflict(f"model {cfg.name} already exists: choose another --name, or "
                           f"remove it first with `gptstore models rm {cfg.name}`", param="name")
        try:
            self.base = self.catalog.resolve(cfg.base)
        except NotFound as exc:
            raise NotFound(f"base model: {exc.message}", param="base") from exc
        if self.base.kind != "full":
            raise InvalidRequest(f"base {self.base.ref} is an adapter; fine-tune from a full "
                                 f"model (its base {self.base.base})", param="base")
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(self.settings,
                                                                              cfg.name)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"run directory {self.run_dir} is not writable "
                               f"({exc.strerror or exc}); choose another --run-dir or fix "
                               "its permissions", param="run_dir") from exc
        latest = ckpt.latest_checkpoint(self.run_dir)
        if cfg.resume and latest is None:
            raise InvalidRequest(f"nothing to resume: {self.run_dir} holds no checkpoint; "
                                 "run without --resume", param="resume")
        if not cfg.resume and latest is not None:
            raise Conflict(f"{self.run_dir} holds a checkpoint of an unfinished run "
                           f"({latest.name}); continue it with --resume, or remove that "
                           "folder to start over", param="resume")
        if not cfg.resume:
            ckpt.clear_run(self.run_dir)
        self.latest = latest

    # -- 1. data -----------------------------------------------------------------------

    def _load_data(self) -> None:
        from transformers import AutoConfig

        from gptstore.inference.loader import load_tokenizer_from

        cfg = self.cfg
        path = Path(cfg.train_file)
        if not path.is_file():
            raise NotFound(f"training file not found: {path}", param="train_file")
        task_name = cfg.task
        fmt = None if cfg.format is not None else detect_format(path, task_name if
                                                                 task_name != AUTO else None)[0]
        if task_name == AUTO:
            task_name = fmt.task if fmt is not None else "causal-lm"
        elif task_name == "classification" and fmt is not None and fmt.task != task_name:
            raise InvalidRequest(
                f"{path.name}: classification needs a label on every example, and this file "
                f"reads as {fmt.name} data without labels; give lines like "
                '{"text": "...", "label": "..."} (or a CSV / TSV with text and label '
                "columns), or train with --task causal-lm", param="train_file")
        self.task = get_task(task_name)
        self.folder = self.catalog.snapshot(self.base)
        self.base_config = AutoConfig.from_pretrained(self.folder)
        self.tokenizer = load_tokenizer_from(self.catalog, self.base)
        if self.tokenizer.pad_token_id is None:  # pad with eos: masked out anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = int(self.tokenizer.pad_token_id)
        limit = getattr(self.base_config, "max_position_embeddings", None) or getattr(
            self.base_config, "n_positions", None) or default_max_length(self.tokenizer)
        max_length = (min(default_max_length(self.tokenizer), int(limit))
                      if cfg.max_length == AUTO else int(cfg.max_length))
        self.task.check_context(self.base_config, max_length)
        train = load_training_data(path, task_name, self.tokenizer, max_length,  # type: ignore[arg-type]
                                   format=cfg.format)
        self.train_data = train
        self.label_names = train.label_names
        if cfg.valid_file:
            valid = load_training_data(cfg.valid_file, task_name, self.tokenizer,  # type: ignore[arg-type]
                                       max_length, label_names=train.label_names)
            self.train_examples, self.valid_examples = train.examples, valid.examples
            self.valid_info: dict[str, Any] = {"name": Path(cfg.valid_file).name,
                                               "digest": f"sha256:{valid.digest}",
                                               "examples": len(valid.examples)}
        else:
            split = auto_valid_split(len(train.examples)) if cfg.valid_split == AUTO \
                else float(cfg.valid_split)
            self.train_examples, self.valid_examples = split_examples(
                train.examples, split, seed=cfg.seed,
                stratify=task_name == "classification")
            self.valid_info = {"split_from": path.name, "fraction": round(split, 4),
                               "examples": len(self.valid_examples)}
        if not self.train_examples:
            raise InvalidRequest(f"{path.name}: no training example is left after the "
                                 "validation split; add examples or give --valid",
                                 param="train_file")
        # auto values: epochs, batch size, learning rate, ... then the step counts
        resolved = resolve_auto(cfg, task=task_name, n_train=len(self.train_examples),
                                max_length=max_length)
        n_batches = math.ceil(len(self.train_examples) / int(resolved.batch_size))
        self.steps_per_epoch = steps_per_epoch(n_batches, resolved.grad_accum_steps)
        self.rcfg = resolve_auto(resolved, task=task_name, n_train=len(self.train_examples),
                                 steps_per_epoch=self.steps_per_epoch)
        self.total_steps = self.steps_per_epoch * int(self.rcfg.epochs)
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.lengths = [e.num_tokens for e in self.train_examples]

    # -- 2. model ----------------------------------------------------------------------

    def _build_model(self) -> None:
        from gptstore.inference.loader import cpu_has_fast_bf16

        cfg = self.rcfg
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == AUTO and cpu_has_fast_bf16())
        frozen = self.method.frozen_backbone
        dropout = float(cfg.dropout)
        # the seed fixes the new head's and the adapters' initial weights
        torch.manual_seed(cfg.seed)
        model, self.restore_config = self.task.load_model(
            self.folder, dtype=self.method.load_dtype(self.bf16),
            dropout=0.0 if frozen else dropout, label_names=self.label_names,
            pad_token_id=self.pad_id)
        self.model = self.method.prepare(model, self.task, cfg)
        if self.bf16:
            # autocast already runs the adapters' matmuls in bf16: PEFT's cast of each
            # LoRA input to the fp32 adapter dtype would be two extra copies per layer
            for module in self.model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
        self.head_dropout = dropout if frozen else 0.0
        if isinstance(self.task, ClassificationTask) and not frozen:
            self.task.add_head_dropout(self.model, dropout)
        random_forward = dropout > 0 or (self.method.name == "lora" and cfg.lora_dropout > 0)
        if cfg.shards == AUTO:
            # head-only trains on cached features or a no-grad backbone: nothing to split
            self.rcfg.shards = auto_shards(torch.get_num_threads(), int(cfg.batch_size),
                                           random_forward=random_forward or frozen)
        elif int(cfg.shards) > 1 and random_forward:
            raise InvalidRequest("shards > 1 needs a forward pass without dropout (dropout "
                                 "and lora_dropout 0): worker threads would draw random "
                                 "numbers in no fixed order and runs would not repeat; set "
                                 "shards to 1 or the dropouts to 0", param="shards")
        self.describe = self.method.describe(self.model)
        if "lora_target" in self.describe and cfg.lora_target == AUTO:
            self.rcfg.lora_target = list(self.describe["lora_target"])
        self.features: dict[str, torch.Tensor] = {}

    # -- 3. optimiser ------------------------------------------------------------------

    def _build_optimizer(self) -> None:
        cfg = self.rcfg
        params = trainable_parameters(self.model)
        self.params = [p for _, p in params]
        groups = decay_groups(params, cfg.weight_decay)
        lr = float(cfg.learning_rate)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=cfg.momentum)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lr,
                                               betas=(cfg.adam_beta1, cfg.adam_beta2),
                                               fused=True)
        self.warmup = round(cfg.warmup_ratio * self.total_steps)

    # -- 4. resume ---------------------------------------------------------------------

    def _resume(self) -> None:
        if not self.cfg.resume or self.latest is None:
            return
        checkpoint = ckpt.load_checkpoint(self.latest)
        now = self.rcfg.to_dict()
        changed = [k for k, v in checkpoint.config.items()
                   if k not in RESUME_FREE and now.get(k) != v]
        if changed:
            diff = "; ".join(f"{k}: {checkpoint.config[k]!r} -> {now.get(k)!r}"
                             for k in changed[:5])
            raise InvalidRequest(f"cannot resume {self.run_dir}: the run was started with "
                                 f"other settings ({diff}); use the same settings, or "
                                 "remove the folder to start over", param="resume")
        ckpt.restore(checkpoint, self.model, self.optimizer)
        self.state = checkpoint.state
        self.resumed_from = checkpoint.path

    # -- 5. train ----------------------------------------------------------------------

    def _train(self) -> None:
        cfg = self.rcfg
        self._cache_features()
        self.shard_runner = (ShardRunner(int(cfg.shards), self.params, torch.get_num_threads())
                             if int(cfg.shards) > 1 else None)
        try:
            self._train_epochs()
        finally:
            if self.shard_runner is not None:
                self.shard_runner.close()

    def _train_epochs(self) -> None:
        cfg, state, task, method = self.rcfg, self.state, self.task, self.method
        accum = cfg.grad_accum_steps
        epochs = int(cfg.epochs)
        self.log.emit(TrainEvent("start", state.step, self.total_steps, state.epoch,
                                 {"resumed": self.resumed_from is not None}))
        session_steps, session_seconds = 0, 0.0
        while not self._done() and state.epoch < epochs:
            epoch = state.epoch
            plan = plan_batches(self.lengths, int(cfg.batch_size), seed=cfg.seed,
                                epoch=epoch, group_by_length=cfg.group_by_length)
            windows = [plan[i:i + accum] for i in range(0, len(plan), accum)]
            while state.window < len(windows) and not self._done():
                # 1. the window's micro-batches; the loss is normalised by the window's
                #    total loss terms (tokens or examples), so accumulation equals one
                #    big batch
                started = time.perf_counter()
                lr = lr_at(state.step, self.total_steps, self.warmup,
                           float(cfg.learning_rate), cfg.schedule)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                method.set_mode(self.model, task, True)
                shards = int(cfg.shards)
                batches = [self._batch(part) for indices in windows[state.window]
                           for part in split_rows(indices, shards)]
                denominator = sum(b.n_targets for b in batches)
                # 2. forward [B, T] -> summed loss, backward, per micro-batch (or per shard
                #    on worker threads, gradients summed in a fixed order)
                if self.shard_runner is not None:
                    loss_sum = self.shard_runner.accumulate(
                        [self._shard_work(b, denominator) for b in batches]).loss_sum
                else:
                    loss_sum = 0.0
                    for batch in batches:
                        with amp(self.bf16):
                            terms = task.forward(self.model, batch,
                                                 frozen_backbone=method.frozen_backbone,
                                                 head_dropout=self.head_dropout)
                        (terms.loss_sum / denominator).backward()
                        loss_sum += float(terms.loss_sum.detach())
                # 3. clip, step, clear
                grad_norm = (float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
                             if cfg.max_grad_norm > 0 else None)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                # 4. account: tokens through the model, time in training steps only
                elapsed = time.perf_counter() - started
                tokens = sum(b.n_tokens for b in batches) if not self.features else 0
                state.step += 1
                state.window += 1
                state.train_tokens += tokens
                state.train_seconds += elapsed
                state.examples_seen += sum(len(i) for i in windows[state.window - 1])
                session_seconds += elapsed
                session_steps += 1
                if state.window == len(windows):  # epoch done: resume starts the next one
                    state.epoch, state.window = epoch + 1, 0
                loss = loss_sum / max(1, denominator)
                self._log_step(loss, lr, grad_norm, tokens, elapsed, session_seconds,
                               session_steps)
                # 5. validate (every N steps, at epoch ends, at the end), checkpoint
                at_end = self._done() or state.window == 0
                if self.valid_examples and (at_end or (cfg.eval_every and state.step %
                                                        int(cfg.eval_every) == 0)):
                    self._validate()
                if cfg.save_every and (state.step % int(cfg.save_every) == 0 or
                                       self._done()):
                    self._checkpoint()

    def _shard_work(self, batch: Any, denominator: int) -> ShardWork:
        def work() -> tuple[torch.Tensor, float, int]:
            with amp(self.bf16):
                terms = self.task.forward(self.model, batch,
                                          frozen_backbone=self.method.frozen_backbone,
                                          head_dropout=self.head_dropout)
            return terms.loss_sum / denominator, float(terms.loss_sum.detach()), batch.n_tokens

        return work

    def _done(self) -> bool:
        return self.state.step >= self.total_steps or self.state.stopped_early

    def _batch(self, indices: list[int]) -> Any:
        batch = self.task.make_batch([self.train_examples[i] for i in indices], self.pad_id)
        if "train" in self.features:
            batch.features = self.features["train"][indices]
        return batch

    def _cache_features(self) -> None:
        """Head-only classification: the frozen backbone's pooled output, once."""
        if not (self.method.frozen_backbone and isinstance(self.task, ClassificationTask)):
            return
        started = time.perf_counter()
        self.method.set_mode(self.model, self.task, False)
        self.features["train"], tokens = extract_features(
            self.model, self.task, self.train_examples, pad_id=self.pad_id, bf16=self.bf16)
        if self.valid_examples:
            self.features["valid"], _ = extract_features(
                self.model, self.task, self.valid_examples, pad_id=self.pad_id,
                bf16=self.bf16)
        # the backbone's pass over the training set is this method's training compute
        self.state.train_tokens += tokens
        self.state.train_seconds += time.perf_counter() - started

    def _log_step(self, loss: float, lr: float, grad_norm: float | None, tokens: int,
                  elapsed: float, session_seconds: float, session_steps: int) -> None:
        state = self.state
        eta = (self.total_steps - state.step) * session_seconds / max(1, session_steps)
        values: dict[str, Any] = {"loss": loss, "lr": lr,
                                  "tokens_per_second": tokens / elapsed if elapsed else 0.0,
                                  "eta_seconds": eta, "epoch": state.examples_seen /
                                  max(1, len(self.train_examples))}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        if state.step % self.cfg.log_every == 0 or self._done():
            state.add_point("train_loss", state.step, round(loss, 6))
            self.log.scalars("train", state.step, values)
        self.log.emit(TrainEvent("step", state.step, self.total_steps, state.epoch, values))

    def _validate(self) -> None:
        state, cfg = self.state, self.rcfg
        self.method.set_mode(self.model, self.task, False)
        metrics = evaluate_examples(self.model, self.task, self.valid_examples,
                                    pad_id=self.pad_id, bf16=self.bf16,
                                    features=self.features.get("valid"),
                                    frozen_backbone=self.method.frozen_backbone)
        metrics = {k: round(v, 6) for k, v in metrics.items()}
        for key, value in metrics.items():
            state.add_point(f"valid_{key}", state.step, value)
        self.log.scalars("valid", state.step, metrics)
        state.last_eval = {**metrics, "step": state.step}
        if self._improves(metrics):
            state.best = {**metrics, "step": state.step}
            state.bad_evals = 0
            ckpt.save_best(self.run_dir, self.model)
        else:
            state.bad_evals += 1
            if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
                state.stopped_early = True
        self.log.emit(TrainEvent("eval", state.step, self.total_steps, state.epoch,
                                 {**metrics, "best": state.best,
                                  "stopped_early": state.stopped_early}))

    def _improves(self, metrics: dict[str, float]) -> bool:
        best = self.state.best
        if best is None:
            return True
        key = str(self.rcfg.metric)
        higher = self.task.metric_directions[key]
        if metrics[key] != best[key]:
            return metrics[key] > best[key] if higher else metrics[key] < best[key]
        return metrics["loss"] < best["loss"]  # a tie on accuracy: the lower loss wins

    def _checkpoint(self) -> None:
        path = ckpt.save_checkpoint(self.run_dir, self.state, self.model, self.optimizer,
                                    self.rcfg.to_dict())
        self.log.emit(TrainEvent("checkpoint", self.state.step, self.total_steps,
                                 self.state.epoch, {"path": str(path)}))

    # -- 6. publish --------------------------------------------------------------------

    def _publish(self) -> FinetuneResult:
        from gptstore.training.publish import publish_run

        state = self.state
        if state.best is not None and state.best["step"] != state.step:
            best = ckpt.load_best(self.run_dir)
            if best is not None:
                ckpt.load_trainable(self.model, best)
        version = publish_run(self)
        ckpt.clear_run(self.run_dir)
        result = self.result(version)
        self.log.emit(TrainEvent("end", state.step, self.total_steps, state.epoch,
                                 result.to_dict()))
        return result

    def result(self, version: VersionInfo) -> FinetuneResult:
        state = self.state
        published = dict(state.best or state.last_eval or {})
        published.pop("step", None)
        stats = padding_stats(self.lengths, plan_batches(
            self.lengths, int(self.rcfg.batch_size), seed=self.rcfg.seed, epoch=0,
            group_by_length=self.rcfg.group_by_length))
        return FinetuneResult(
            name=version.model, ref=version.ref, task=self.task.name,
            method=self.method.name, kind=version.kind,
            train_tokens=state.train_tokens, train_seconds=round(state.train_seconds, 3),
            tokens_per_second=round(state.train_tokens / max(1e-9, state.train_seconds), 1),
            steps=state.step,
            epochs=round(state.examples_seen / max(1, len(self.train_examples)), 3),
            train_examples=len(self.train_examples), valid_examples=len(self.valid_examples),
            final=published, best=state.best, last=state.last_eval,
            stopped_early=state.stopped_early,
            padding_fraction=round(stats.padding_fraction, 4), run_dir=str(self.run_dir),
            config=self.rcfg.to_dict())


def decay_groups(params: Sequence[tuple[str, torch.nn.Parameter]], weight_decay: float
                 ) -> list[dict[str, Any]]:
    """Optimiser groups: weight decay on matrices only; biases, norm scales and other 1-D
    weights are not shrunk (nanoGPT's rule)."""
    return [{"params": [p for _, p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0}]


def split_examples(examples: Sequence[EncodedExample], fraction: float, *, seed: int,
                   stratify: bool) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """Hold out `fraction` of the examples (seeded); per class when `stratify`, so every
    label keeps training examples."""
    if fraction <= 0:
        return list(examples), []
    rng = np.random.default_rng([seed, 1])
    groups: dict[int | None, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.label if stratify else None, []).append(index)
    held: set[int] = set()
    for members in groups.values():
        take = min(len(members) - 1, round(fraction * len(members)))
        held.update(rng.permutation(members)[:max(0, take)].tolist())
    if not held and len(examples) > 1:
        held.add(int(rng.integers(len(examples))))
    train = [e for i, e in enumerate(examples) if i not in held]
    valid = [e for i, e in enumerate(examples) if i in held]
    return train, valid

