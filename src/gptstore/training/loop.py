"""The fine-tuning loop: from a `TrainConfig` to a published store model.

`finetune(config)` runs the steps of `FineTuneRun.run` in order:

0. store checks: the new name is free, the base exists, the run folder is writable,
   a checkpoint is there exactly when `resume` says so;
1. data (`prepare.py`): the base's tokenizer, the training file (refused with its
   errors listed by line), the validation file or a seeded (stratified) split, and the
   config resolved once from them: every `auto` replaced, frozen from here on;
2. model: the base loaded for the task by the one loader (`inference.loader`) in the
   method's dtype (bf16 frozen weights where bf16 is fast, fp32 trainable masters),
   dropout set through its config hook, wrapped by the method;
3. optimiser: AdamW (decoupled decay) or SGD with momentum; decay only on matrices
   (never biases, norms or other 1-D weights); the learning rate is set every step
   from warm-up + linear / cosine decay (a pure function of the step: nothing to
   restore on resume);
4. resume: weights, optimiser, RNG and loop position from the last checkpoint;
5. train: length-grouped micro-batches (the plan of an epoch depends on seed and epoch
   only), gradient accumulation over windows of micro-batches, bf16 autocast, gradient
   clipping, validation at epoch ends and every N steps (with `eval_every: auto`,
   between epoch ends as the time budget allows, ~10% of the run: cadence.py), the
   best weights kept,
   early stopping with patience, checkpoints every N steps;
6. record and publish: the finished run becomes a frozen `RunRecord` (`record.py`);
   the method writes the best weights into a staging folder and `publish.py`
   publishes it with the record's lineage and metrics; the run's checkpoints go (its
   logs stay).

Owns the order of things and the run's state; the task (what is predicted), the method
(what trains), checkpoints, logs, the record and publishing are in their own modules.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gptstore.catalog.evaluations import check_eval_suite
from gptstore.catalog.names import parse_ref
from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.data.batching import padding_stats, plan_batches
from gptstore.errors import Conflict, InvalidRequest, NotFound, StorageError
from gptstore.settings import Settings
from gptstore.training import checkpoint as ckpt
from gptstore.training import zero_shot
from gptstore.training.auto_eval import evaluate_published
from gptstore.training.averaging import WeightAverage
from gptstore.training.cadence import EvalCadence
from gptstore.training.config import AUTO, TrainConfig, run_steps
from gptstore.training.evaluate import evaluate_examples, extract_features
from gptstore.training.head_init import init_head_from_verbalizers
from gptstore.training.logs import Callback, RunLog, TrainEvent
from gptstore.training.methods import get_method, trainable_parameters
from gptstore.training.parallel import ShardRunner, ShardWork, split_rows
from gptstore.training.prepare import prepare_run
from gptstore.training.publish import publish_run
from gptstore.training.record import RunRecord, choose_published, within_noise
from gptstore.training.tasks import DROPOUT_KEYS, ClassificationTask, amp, get_task

#: fields that may differ between a run and its resume (they do not change the result)
RESUME_FREE = {"resume", "threads", "description", "tags", "license", "run_dir",
               "checkpoint_models", "eval_suite"}


class RunInterrupted(Exception):
    """The run was asked to stop (`should_stop`) and saved a checkpoint to resume from."""

    def __init__(self, step: int, path: Path) -> None:
        super().__init__(f"stopped at step {step}; checkpoint {path}")
        self.step = step
        self.path = path


@dataclass(frozen=True)
class FinetuneResult:
    """What `finetune` returns: the published version and the run's record."""

    name: str  # namespace/name of the new model
    ref: str  # namespace/name@N of the published version
    record: RunRecord
    #: results on `eval_suite` (base and new model), measured after publishing
    evaluations: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """What `gptstore finetune --json` prints."""
        doc = {"name": self.name, "ref": self.ref, **self.record.summary()}
        if self.evaluations:
            doc["evaluations"] = list(self.evaluations)
        return doc


def finetune(config: TrainConfig, *, settings: Settings | None = None,
             catalog: Catalog | None = None, callbacks: Sequence[Callback] = (),
             should_stop: Callable[[], bool] | None = None) -> FinetuneResult:
    """Fine-tune `config.base` on `config.train_file` and publish `config.name`.

    `should_stop()` is asked after every optimiser step; when it says yes the run saves
    a checkpoint and raises `RunInterrupted` (a paused job; `resume=True` continues it).
    """
    settings = settings or (catalog.settings if catalog is not None else Settings())
    own = catalog is None
    catalog = catalog or Catalog(settings)
    try:
        return FineTuneRun(config, settings, catalog, callbacks, should_stop).run()
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
                 callbacks: Sequence[Callback],
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.cfg = config
        self.should_stop = should_stop
        self.settings = settings
        self.catalog = catalog
        self.callbacks = callbacks
        self.method = get_method(config.method)
        self.state = ckpt.TrainState()
        self.resumed_from: Path | None = None
        self.timings: dict[str, float] = {}

    def run(self) -> FinetuneResult:
        threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> FinetuneResult:
        started = time.perf_counter()
        self.made_run_dir = False
        try:
            self._check_store()
            self._prepare()
            self.timings["prepare"] = time.perf_counter() - started
            self._build_model()
            self._build_optimizer()
            self._resume()
        except BaseException:
            # a run refused before it began (bad data, nothing to resume) leaves no empty
            # folder of its own behind
            if self.made_run_dir and self.run_dir.is_dir() \
                    and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise
        self.timings["load_model"] = time.perf_counter() - started - self.timings["prepare"]
        self.timings["train"] = 0.0  # in optimiser steps (this session)
        self.timings["validation"] = 0.0
        self.log = RunLog(self.run_dir, resume_step=self.state.step if self.resumed_from
                          else None, callbacks=self.callbacks)
        try:
            self._train()
            if self.average is not None:  # the run's result is the average from here on
                self.average.apply()
            # the published record holds the times up to publishing; the returned one
            # adds publishing itself and the total, command to published model
            publishing = time.perf_counter()
            result = self._publish(self._record())
            now = time.perf_counter()
            timings = {**self.timings, "publish": now - publishing, "total": now - started}
            result = replace(result, record=replace(result.record, timings=timings))
            if self.cfg.eval_suite:  # after the total: the model is usable before this
                result = replace(result, evaluations=evaluate_published(
                    self.catalog, self.cfg.eval_suite, result.ref, self.base.ref))
            self.log.emit(TrainEvent("end", self.state.step, self.total_steps,
                                     self.state.epoch, result.to_dict()))
            return result
        finally:
            self.log.close()

    # -- 0. store checks ---------------------------------------------------------------

    def _check_store(self) -> None:
        cfg = self.cfg
        if cfg.eval_suite:
            check_eval_suite(self.catalog, cfg.eval_suite)  # before hours of training, not after
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
            self.made_run_dir = not self.run_dir.exists()
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

    # -- 1. data, and the config resolved once -----------------------------------------

    def _prepare(self) -> None:
        from gptstore.inference.precision import precision_for

        # precision auto: the store's setting, else what this machine's training matmul
        # measured faster in
        pinned = self.settings.training_precision
        fast_bf16 = self.cfg.precision == "auto" and (
            pinned == "bf16" if pinned != "auto"
            else precision_for("training", self.settings.home) == "bf16")
        self.data, self.rcfg = prepare_run(self.cfg, self.catalog, self.base,
                                           cores=torch.get_num_threads(),
                                           fast_bf16=fast_bf16)
        self.task = get_task(self.data.task)
        self.train_examples, self.valid_examples = self.data.train, self.data.valid
        self.pad_id = self.data.pad_id
        self.lengths = self.data.lengths
        self.total_steps = run_steps(len(self.train_examples), int(self.rcfg.batch_size),
                                     self.rcfg.grad_accum_steps, int(self.rcfg.epochs),
                                     self.rcfg.max_steps)
        self.bf16 = self.rcfg.precision == "bf16"

    # -- 2. model ----------------------------------------------------------------------

    def _build_model(self) -> None:
        from gptstore.inference.loader import load_version
        from gptstore.training import attention

        cfg = self.rcfg
        frozen = self.method.frozen_backbone
        dropout = float(cfg.dropout)
        self.restore_config: dict[str, float] = {}

        def set_dropout(config: Any) -> None:
            # a frozen backbone never drops out; the old values come back before a full
            # model is saved (dropout is a training setting, not part of the model)
            self.restore_config.update(apply_dropout(config, 0.0 if frozen else dropout))

        # the seed fixes the new head's and the adapters' initial weights
        torch.manual_seed(cfg.seed)
        loaded = load_version(self.catalog, self.base, task=self.data.task,
                              label_names=self.data.label_names,
                              dtype=self.method.load_dtype(self.bf16), configure=set_dropout,
                              attn_implementation=attention.register())
        self.head_init = None
        if isinstance(self.task, ClassificationTask) and self.rcfg.head_init == "fresh":
            self.head_init = "fresh"
        elif isinstance(self.task, ClassificationTask) and self.data.label_names:
            # rows of the LM head for each label's word: step 0 scores what zero-shot does
            self.head_init = init_head_from_verbalizers(loaded.model, loaded.folder,
                                                        self.data.tokenizer,
                                                        self.data.label_names)
        self.model = self.method.prepare(loaded.model, self.task, cfg)
        if self.bf16:
            # autocast already runs the adapters' matmuls in bf16: PEFT's cast of each
            # LoRA input to the fp32 adapter dtype would be two extra copies per layer
            for module in self.model.modules():
                if hasattr(module, "cast_input_dtype_enabled"):
                    module.cast_input_dtype_enabled = False
        self.head_dropout = dropout if frozen else 0.0
        if isinstance(self.task, ClassificationTask) and not frozen:
            self.task.add_head_dropout(self.model, dropout)
        self.describe = self.method.describe(self.model)
        if self.head_init is not None:
            self.describe["head_init"] = self.head_init
        self.features: dict[str, torch.Tensor] = {}

    # -- 3. optimiser ------------------------------------------------------------------

    def _build_optimizer(self) -> None:
        cfg = self.rcfg
        params = trainable_parameters(self.model)
        self.params = [p for _, p in params]
        groups = decay_groups(params, cfg.weight_decay,
                              b_ratio=cfg.loraplus_lr_ratio if cfg.method == "lora" else 1.0)
        lr = float(cfg.learning_rate)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=cfg.momentum)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lr,
                                               betas=(cfg.adam_beta1, cfg.adam_beta2),
                                               fused=True)
        self.warmup = round(cfg.warmup_ratio * self.total_steps)
        self.average = WeightAverage(params, cfg.ema_decay) if cfg.ema_decay else None

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
        if self.average is not None:
            if checkpoint.average is None:
                raise InvalidRequest(f"cannot resume {self.run_dir}: the run was started "
                                     "without a weight average; resume it with ema_decay 0, "
                                     "or remove the folder to start over", param="resume")
            self.average.load(checkpoint.average)
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
                                 {"resumed": self.resumed_from is not None,
                                  "config": cfg.to_dict(),
                                  "train_examples": len(self.train_examples),
                                  "valid_examples": len(self.valid_examples)}))
        session_steps, session_seconds, session_tokens = 0, 0.0, 0
        self.cadence = EvalCadence.for_run(
            total_steps=self.total_steps, eval_every=int(cfg.eval_every),
            auto=self.cfg.eval_every == AUTO,
            valid_tokens=sum(e.num_tokens for e in self.valid_examples))
        if state.step == 0 and self.valid_examples and self.head_init == "verbalizers":
            # the starting point is the base's zero-shot classifier: validated, it can be
            # the best checkpoint, so the published model never scores below it; another
            # run that would compute the same numbers reuses them (zero_shot.py)
            self._validate(reuse_key=zero_shot.cache_key(
                base_digest=self.base.manifest_digest, task=self.data.task,
                label_names=self.data.label_names, method=self.method.name,
                bf16=self.bf16, pad_id=self.pad_id, threads=torch.get_num_threads(),
                examples=self.valid_examples))
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
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                method.set_mode(self.model, task, True)
                shards = int(cfg.shards)
                batches = [self._batch(part) for indices in windows[state.window]
                           for part in split_rows(indices, shards)]
                denominator = sum(b.n_targets for b in batches)
                # 2. forward [B, T] -> summed loss, backward, per micro-batch (or per shard
                #    on worker threads, gradients summed in a fixed order)
                if self.shard_runner is not None:
                    shards_done = self.shard_runner.accumulate(
                        [self._shard_work(b, denominator) for b in batches])
                    loss_sum, correct = shards_done.loss_sum, shards_done.correct
                else:
                    loss_sum, correct = 0.0, 0
                    for batch in batches:
                        with amp(self.bf16):
                            terms = task.forward(self.model, batch,
                                                 frozen_backbone=method.frozen_backbone,
                                                 head_dropout=self.head_dropout)
                        (terms.loss_sum / denominator).backward()
                        loss_sum += float(terms.loss_sum.detach())
                        correct += terms.correct
                # 3. clip, step, clear
                grad_norm = (float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
                             if cfg.max_grad_norm > 0 else None)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.average is not None:
                    self.average.update()
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
                session_tokens += tokens
                self.timings["train"] += elapsed
                if state.window == len(windows):  # epoch done: resume starts the next one
                    state.epoch, state.window = epoch + 1, 0
                loss = loss_sum / max(1, denominator)
                # training accuracy of the step: of target tokens (causal-lm) or examples
                accuracy = correct / max(1, denominator)
                self._log_step(loss, accuracy, lr, grad_norm, tokens, elapsed,
                               session_seconds, session_steps)
                # 5. validate (at epoch ends and the end; between them every N steps or,
                #    with auto, as the time budget allows: cadence.py), checkpoint
                if self.valid_examples and self.cadence.due(
                        state.step, epoch_end=state.window == 0, run_end=self._done(),
                        train_seconds=session_seconds, train_tokens=session_tokens):
                    self._validate()
                if cfg.save_every and (state.step % int(cfg.save_every) == 0 or
                                       self._done()):
                    self._checkpoint()
                finished = state.epoch if state.window == 0 else None  # epochs done
                if finished is not None and epochs - finished < cfg.checkpoint_models:
                    self._publish_snapshot()
                if self.should_stop is not None and not self._done() and self.should_stop():
                    path = self._checkpoint()
                    raise RunInterrupted(state.step, path)

    def _shard_work(self, batch: Any, denominator: int) -> ShardWork:
        def work() -> tuple[torch.Tensor, float, int]:
            with amp(self.bf16):
                terms = self.task.forward(self.model, batch,
                                          frozen_backbone=self.method.frozen_backbone,
                                          head_dropout=self.head_dropout)
            return (terms.loss_sum / denominator, float(terms.loss_sum.detach()),
                    batch.n_tokens, terms.correct)

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
        self.timings["train"] += time.perf_counter() - started

    def _log_step(self, loss: float, accuracy: float, lr: float, grad_norm: float | None,
                  tokens: int, elapsed: float, session_seconds: float,
                  session_steps: int) -> None:
        state = self.state
        eta = (self.total_steps - state.step) * session_seconds / max(1, session_steps)
        values: dict[str, Any] = {"loss": loss, "accuracy": accuracy, "lr": lr,
                                  "tokens_per_second": tokens / elapsed if elapsed else 0.0,
                                  "eta_seconds": eta, "epoch": state.examples_seen /
                                  max(1, len(self.train_examples))}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        if state.step % self.cfg.log_every == 0 or self._done():
            state.add_point("train_loss", state.step, round(loss, 6))
            state.add_point("train_accuracy", state.step, round(accuracy, 6))
            self.log.scalars("train", state.step, values)
        self.log.emit(TrainEvent("step", state.step, self.total_steps, state.epoch, values))

    def _validate(self, reuse_key: str | None = None) -> None:
        """Validate the current weights; with `reuse_key`, metrics stored under it by an
        earlier run stand in for computing them (and are stored when computed)."""
        state, cfg = self.state, self.rcfg
        started = time.perf_counter()
        home = self.settings.home
        metrics = zero_shot.read(home, reuse_key) if reuse_key else None
        if metrics is not None and not {"loss", str(cfg.metric)} <= metrics.keys():
            metrics = None  # not what this run chooses by: computed again
        reused = metrics is not None
        if metrics is None:
            self.method.set_mode(self.model, self.task, False)
            pool = self.shard_runner.pool if self.shard_runner is not None else None
            with self._averaged():
                metrics = evaluate_examples(self.model, self.task, self.valid_examples,
                                            pad_id=self.pad_id, bf16=self.bf16,
                                            features=self.features.get("valid"),
                                            frozen_backbone=self.method.frozen_backbone,
                                            executor=pool)
            metrics = {k: round(v, 6) for k, v in metrics.items()}
            if reuse_key:
                zero_shot.write(home, reuse_key, metrics)
        for key, value in metrics.items():
            state.add_point(f"valid_{key}", state.step, value)
        self.log.scalars("valid", state.step, metrics)
        state.last_eval = {**metrics, "step": state.step}
        if self._improves(metrics):
            state.best = {**metrics, "step": state.step}
            state.bad_evals = 0
            with self._averaged():
                ckpt.save_best(self.run_dir, self.model)
        elif state.best is None or not within_noise(
                state.best, metrics, metric=str(cfg.metric),
                higher=self.task.metric_directions[str(cfg.metric)],
                valid_examples=len(self.valid_examples)):
            # within the validation set's noise of the best is no evidence of getting
            # worse: on a small split, early stopping would stop on chance as the
            # published-checkpoint choice would (`choose_published`)
            state.bad_evals += 1
            if cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience:
                state.stopped_early = True
        seconds = time.perf_counter() - started
        self.timings["validation"] += seconds
        if not reused:  # what it cost says nothing of the next validation's cost
            self.cadence.record(state.step, seconds)
        self.log.emit(TrainEvent("eval", state.step, self.total_steps, state.epoch,
                                 {**metrics, "best": state.best, "reused": reused,
                                  "stopped_early": state.stopped_early}))

    def _averaged(self) -> AbstractContextManager[None]:
        """Inside: the model holds the weights a validation or a publish reads (the
        moving average where the run keeps one, `ema_decay`)."""
        return self.average.applied() if self.average is not None else nullcontext()

    def _improves(self, metrics: dict[str, float]) -> bool:
        best = self.state.best
        if best is None:
            return True
        key = str(self.rcfg.metric)
        higher = self.task.metric_directions[key]
        if metrics[key] != best[key]:
            return metrics[key] > best[key] if higher else metrics[key] < best[key]
        return metrics["loss"] < best["loss"]  # a tie on accuracy: the lower loss wins

    def _checkpoint(self) -> Path:
        path = ckpt.save_checkpoint(
            self.run_dir, self.state, self.model, self.optimizer, self.rcfg.to_dict(),
            average=self.average.state() if self.average is not None else None)
        self.log.emit(TrainEvent("checkpoint", self.state.step, self.total_steps,
                                 self.state.epoch, {"path": str(path)}))
        return path

    def _publish_snapshot(self) -> None:
        """The current weights as a store model of their own, `<name>-step-<step>` (an
        epoch-end checkpoint a user can try); kept when a resumed run passes again."""
        state = self.state
        name = f"{self.cfg.name}-step-{state.step}"
        if not self.catalog.exists(name):
            record = self._record()
            with self._averaged():
                self._export_and_publish(record, name=name, description=(
                    f"Checkpoint at step {state.step} (end of epoch {state.epoch}) of "
                    f"{self.cfg.name}, fine-tuned from {self.base.ref}."), checkpoint=True)
        last = state.last_eval or {}
        train_loss = state.curves.get("train_loss", [])
        metrics: dict[str, Any] = {"step": state.step}
        if train_loss:
            metrics["train_loss"] = train_loss[-1][1]
        train_accuracy = state.curves.get("train_accuracy", [])
        if train_accuracy:
            key = "train_mean_token_accuracy" if self.task.name == "causal-lm" \
                else "train_accuracy"
            metrics[key] = train_accuracy[-1][1]
        metrics.update({f"valid_{k}": v for k, v in last.items() if k != "step"})
        self.log.emit(TrainEvent("checkpoint_model", state.step, self.total_steps,
                                 state.epoch, {"model": name,
                                               "metrics": metrics}))

    # -- 6. record and publish ---------------------------------------------------------

    def _record(self) -> RunRecord:
        """The finished run as a frozen value (what every report reads)."""
        state, cfg = self.state, self.rcfg
        stats = padding_stats(self.lengths, plan_batches(
            self.lengths, int(cfg.batch_size), seed=cfg.seed, epoch=0,
            group_by_length=cfg.group_by_length))
        return RunRecord(
            config=cfg, auto_fields=tuple(self.cfg.auto_fields), base=self.base.ref,
            task=self.task.name, method=self.method.name, kind=self.method.kind,
            train_data=self.data.train_info, valid_data=self.data.valid_info,
            label_names=self.data.label_names, trainable=dict(self.describe),
            precision="bf16 autocast" if self.bf16 else "fp32", steps=state.step,
            examples_seen=state.examples_seen, train_tokens=state.train_tokens,
            train_seconds=state.train_seconds, stopped_early=state.stopped_early,
            best=state.best, last=state.last_eval,
            published=choose_published(
                state.best, state.last_eval, metric=str(cfg.metric),
                higher=self.task.metric_directions[str(cfg.metric)], steps=state.step,
                valid_examples=len(self.valid_examples)),
            curves={name: [list(p) for p in points] for name, points in state.curves.items()},
            padding_fraction=stats.padding_fraction, timings=dict(self.timings),
            run_dir=str(self.run_dir))

    def _publish(self, record: RunRecord) -> FinetuneResult:
        """The best weights published with the record; then the run's checkpoints go."""
        if record.published is not None and record.published_step != self.state.step:
            best = ckpt.load_best(self.run_dir)
            if best is not None:
                ckpt.load_trainable(self.model, best)
        version = self._export_and_publish(record)
        ckpt.clear_run(self.run_dir)
        return FinetuneResult(name=version.model, ref=version.ref, record=record)

    def _export_and_publish(self, record: RunRecord, **publish: Any) -> VersionInfo:
        """The method writes the model into a private staging folder, published from there
        atomically (a failure leaves nothing visible)."""
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.settings.tmp_dir, prefix="finetune-"))
        try:
            self.method.export(self.model, staging, base_ref=self.base.ref,
                               tokenizer=self.data.tokenizer,
                               restore_config=self.restore_config)
            return publish_run(self.catalog, record, staging, **publish)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def apply_dropout(config: Any, p: float) -> dict[str, float]:
    """Set every dropout probability the architecture has to `p`; returns the old values
    (restored before a full model is saved)."""
    old = {}
    for key in DROPOUT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            old[key] = float(value)
            setattr(config, key, p)
    return old


def decay_groups(params: Sequence[tuple[str, torch.nn.Parameter]], weight_decay: float,
                 b_ratio: float = 1.0) -> list[dict[str, Any]]:
    """Optimiser groups: weight decay on matrices only; biases, norm scales and other 1-D
    weights are not shrunk (nanoGPT's rule). With `b_ratio` > 1 (LoRA+), the LoRA B
    matrices form a group of their own whose learning rate is `b_ratio` times the
    schedule's (`lr_scale`, read by the loop at every step); the A matrices, a
    classification head and everything else follow the schedule as it is."""
    def is_b(name: str) -> bool:
        return b_ratio != 1.0 and ".lora_B." in name

    groups = [{"params": [p for n, p in params if p.ndim >= 2 and not is_b(n)],
               "weight_decay": weight_decay, "lr_scale": 1.0},
              {"params": [p for n, p in params if p.ndim < 2], "weight_decay": 0.0,
               "lr_scale": 1.0}]
    b_params = [p for n, p in params if p.ndim >= 2 and is_b(n)]
    if b_params:
        groups.append({"params": b_params, "weight_decay": weight_decay,
                       "lr_scale": float(b_ratio)})
    return groups
