"""The one fine-tuning configuration: `TrainConfig`, and how its `auto` values resolve.

Every front end (the `gptstore finetune` flags, the REST payload, a job record, a
notebook) builds this one dataclass; each field carries its help text in
`metadata["help"]` (the CLI reuses it), and `__post_init__` refuses a bad value with a
message naming the field and the fix. Fields that accept `"auto"` are filled by
`resolve_auto` from the data size and the method, following OpenAI's fine-tuning API
(epochs from the example count, a learning rate per method); the resolved config, and
which fields were auto, go into the published model's lineage.

Owns no torch, no files: checks that need the store (does the base exist, is the
context longer than the base supports, is the run folder writable) happen in `loop.py`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from gptstore.catalog.names import parse_ref
from gptstore.errors import InvalidRequest
from gptstore.tasks import TASKS

AUTO = "auto"
TASK_CHOICES = (AUTO, *TASKS)
METHOD_CHOICES = ("lora", "full", "head")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
METRICS = ("auto", "loss", "accuracy", "macro_f1", "token_accuracy")
HEAD_INITS = ("verbalizers", "fresh")
ALL_LINEAR = "all-linear"  # PEFT's name for every projection of every layer
ATTENTION = "attention"  # PEFT's default for the architecture (q_proj,v_proj for Llama)

#: OpenAI's fine-tuning API aims at this many example passes (epochs x examples) ...
MIN_TARGET_EXAMPLES = 100
#: ... and at most this many; epochs are clamped to [1, MAX_AUTO_EPOCHS].
MAX_TARGET_EXAMPLES = 25_000
DEFAULT_EPOCHS = 3
MAX_AUTO_EPOCHS = 25
#: auto batch sizes shrink until a run makes at least this many optimiser steps
MIN_AUTO_STEPS = 100

#: learning rates by method (and task where the head is new and needs more)
AUTO_LEARNING_RATES: dict[tuple[str, str], float] = {
    ("lora", "causal-lm"): 2e-4,
    ("lora", "classification"): 5e-4,
    ("full", "causal-lm"): 2e-5,
    ("full", "classification"): 3e-5,
    ("head", "causal-lm"): 1e-3,
    ("head", "classification"): 2e-3,
}


def _help(text: str, default: Any = MISSING) -> Any:
    """A dataclass field with help text (the CLI and the docs show it)."""
    if default is MISSING:
        return field(metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a fine-tuning run needs, with OpenAI-style `auto` defaults."""

    # -- what to train ---------------------------------------------------------------
    base: str = _help("Base model in the store, namespace/name[@VERSION].")
    train_file: str = _help("Training file (chat / prompt-completion JSONL, .txt, "
                            "text+label JSONL, CSV or TSV).")
    name: str = _help("Name of the new store model, namespace/name.")
    task: str = _help("causal-lm (generation, chat, QA, ...) or classification; auto: "
                      "from the training file's format.", AUTO)
    method: str = _help("lora (an adapter over the frozen base), full (every weight) or "
                        "head (only the output layer: the linear-probe baseline).", "lora")
    valid_file: str | None = _help("Validation file; without one, a held-out split of "
                                   "the training file is used (see valid_split).", None)
    valid_split: float | str = _help("Fraction of the training file held out for "
                                     "validation when no valid_file is given; auto: 10% "
                                     "(at most 1000 examples, none below 10 examples).", AUTO)
    format: str | None = _help("Training-file format, overriding detection.", None)
    max_length: int | str = _help("Context length in tokens; longer examples are cut. "
                                  "auto: the base's context, at most 1024.", AUTO)
    # -- optimisation ----------------------------------------------------------------
    epochs: int | str = _help("Passes over the training data; auto: 3, more for small "
                              "files, fewer for large ones (OpenAI's rule).", AUTO)
    learning_rate: float | str = _help("Peak learning rate; auto: by method (LoRA 2e-4, "
                                       "5e-4 for classification; full 2e-5; head 1e-3).",
                                       AUTO)
    batch_size: int | str = _help("Examples per micro-batch; auto: 8, or 16 from 1000 "
                                  "examples on, smaller for small files so a run makes at "
                                  "least 100 optimiser steps.", AUTO)
    grad_accum_steps: int = _help("Micro-batches per optimiser step (effective batch = "
                                  "batch_size x grad_accum_steps).", 1)
    optimizer: str = _help("adamw or sgd (with momentum).", "adamw")
    momentum: float = _help("SGD momentum.", 0.9)
    adam_beta1: float = _help("AdamW beta1.", 0.9)
    adam_beta2: float = _help("AdamW beta2.", 0.999)
    weight_decay: float = _help("L2 weight decay (decoupled for AdamW); never on biases, "
                                "norms or other 1-D parameters.", 0.01)
    schedule: str = _help("Learning-rate schedule after warm-up: linear, cosine or "
                          "constant.", "linear")
    warmup_ratio: float = _help("Fraction of the optimiser steps spent warming the "
                                "learning rate up from 0.", 0.05)
    max_grad_norm: float = _help("Clip the gradient norm to this; 0 turns clipping off.",
                                 1.0)
    ema_decay: float = _help("Validate, keep and publish an exponential moving average of "
                             "the trained weights, over about 1 / (1 - decay) optimiser "
                             "steps (e.g. 0.99); 0: the weights as the last step left "
                             "them.", 0.0)
    dropout: float | str = _help("Dropout at the model's dropout points (attention, "
                                 "residual, embeddings, as the architecture has them) and "
                                 "before a classification head; auto: 0.1 for full and "
                                 "head, 0 for LoRA (which has lora_dropout).", AUTO)
    head_init: str = _help("Classification head at step 0. verbalizers: the LM head's rows "
                           "of each label's word, so the fine-tune starts from the base's "
                           "zero-shot answer (a fresh head where labels are not words); "
                           "fresh: always a new random head.", "verbalizers")
    # -- LoRA ------------------------------------------------------------------------
    lora_r: int = _help("LoRA rank.", 8)
    lora_alpha: float | str = _help("LoRA alpha (scale = alpha / r); auto: 2 x r.", AUTO)
    loraplus_lr_ratio: float = _help("LoRA+: the B matrices learn this many times faster "
                                     "than the A matrices (Hayou et al. 2024; PEFT's "
                                     "create_loraplus_optimizer, LLaMA-Factory's "
                                     "loraplus_lr_ratio); 1: plain LoRA.", 1.0)
    lora_dropout: float = _help("Dropout on the LoRA input (PEFT's default 0; on a CPU "
                                "drawing the masks costs 10-25% of a LoRA step).", 0.0)
    lora_target: list[str] | str = field(default=AUTO, metadata={"help": (
        "Modules that get LoRA, e.g. q_proj,v_proj; attention: PEFT's default for the "
        "architecture (q_proj,v_proj for Llama, c_attn for GPT-2); auto: all-linear "
        "(every projection of every layer, the output head excluded).")})
    # -- validation, checkpoints, logging --------------------------------------------
    eval_every: int | str = _help("Validate every N optimiser steps (and at each epoch "
                                  "end); 0: at epoch ends only; auto: at epoch ends and "
                                  "between them by time, at most about 10% of the run "
                                  "and 10 times a run.", AUTO)
    metric: str = _help("Validation metric that picks the best checkpoint and drives "
                        "early stopping; auto: accuracy (classification) or loss.", AUTO)
    early_stopping_patience: int = _help("Stop after this many validations in a row "
                                         "without improvement (about half a run at the "
                                         "auto eval_every); 0 never stops early.", 5)
    save_every: int | str = _help("Checkpoint every N optimiser steps (for --resume); "
                                  "0: never; auto: about 10 times a run.", AUTO)
    log_every: int = _help("Log the training loss every N optimiser steps.", 1)
    max_steps: int | None = _help("Stop after this many optimiser steps (a quick trial).",
                                  None)
    checkpoint_models: int = _help("Publish the weights at the end of each of the last N "
                                   "epochs as a store model of its own, "
                                   "<name>-step-<step> (OpenAI's per-epoch checkpoints); "
                                   "0: none.", 0)
    # -- runtime ---------------------------------------------------------------------
    seed: int = _help("Seed of the split, the batch order, the new weights and dropout: "
                      "the same seed and data give the same metrics.", 0)
    precision: str = _help("auto: bf16 autocast where this CPU's training matmul "
                           "measured faster in bf16 (timed once per machine), else fp32; "
                           "or force bf16 / fp32.", AUTO)
    group_by_length: bool = _help("Batch examples of similar length together (little "
                                  "padding); off: plain shuffled batches.", True)
    threads: int | None = _help("torch CPU threads; default: torch's choice (the cores).",
                                None)
    shards: int | str = _help("Split each micro-batch into this many shards trained at once "
                              "on worker threads (one core each): faster than one "
                              "multi-threaded pass for small models. auto: 2 with 2+ cores "
                              "when the forward pass has no dropout (LoRA by default), "
                              "else 1.", AUTO)
    run_dir: str | None = _help("Folder for checkpoints and logs; default "
                                "GPTSTORE_HOME/runs/<namespace>--<name>.", None)
    resume: bool = _help("Continue the run in run_dir from its last checkpoint.", False)
    # -- publishing ------------------------------------------------------------------
    description: str = _help("Description on the model card.", "")
    tags: list[str] = field(default_factory=list, metadata={"help": "Tags of the new model."})
    license: str | None = _help("License id of the new model, e.g. apache-2.0.", None)
    eval_suite: str | None = _help("After publishing, evaluate the new model (and its base, "
                                   "if the suite has no result for it yet) on this "
                                   "evaluation suite; results join the suite's leaderboard "
                                   "and the model card.", None)
    visibility: str = _help("Who may read the new model: private (its owner), org (the "
                            "owner's organisations) or public.", "public")

    def __post_init__(self) -> None:
        self._check_names()
        self._check_choices()
        self._check_numbers()

    # -- checks ----------------------------------------------------------------------

    def _check_names(self) -> None:
        for key in ("base", "train_file", "name"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise InvalidRequest(f"{key} is required: give the {_WHAT[key]}", param=key)
        try:
            parse_ref(self.base)
        except InvalidRequest as exc:
            raise InvalidRequest(f"base: {exc.message}", param="base") from exc
        try:
            parse_ref(self.name, allow_version=False)
        except InvalidRequest as exc:
            raise InvalidRequest(f"name: {exc.message}", param="name") from exc
        if isinstance(self.lora_target, str) and self.lora_target != AUTO:
            # frozen dataclass: the one normalisation happens before anyone sees it
            object.__setattr__(self, "lora_target", [
                t.strip() for t in self.lora_target.split(",") if t.strip()])
        if isinstance(self.lora_target, list) and not self.lora_target:
            raise InvalidRequest("lora_target is empty: name modules such as q_proj,v_proj "
                                 "or leave it at auto", param="lora_target")

    def _check_choices(self) -> None:
        # here, not at the top: catalog.access imports SQLAlchemy, ~0.15 s of every CLI
        # command's start (the CLI imports this module for its flags' defaults)
        from gptstore.catalog.access import VISIBILITIES

        for key, choices in (("task", TASK_CHOICES), ("method", METHOD_CHOICES),
                             ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                             ("precision", PRECISIONS), ("metric", METRICS),
                             ("head_init", HEAD_INITS), ("visibility", VISIBILITIES)):
            value = getattr(self, key)
            if value not in choices:
                raise InvalidRequest(f"{key} {value!r} is not one of {', '.join(choices)}",
                                     param=key)

    def _check_numbers(self) -> None:
        _positive(self, "learning_rate", "try 2e-4 for LoRA, or leave it at auto")
        _at_least(self, "epochs", 1, "one pass over the data is the least")
        _at_least(self, "batch_size", 1, "try 8 or 16, or leave it at auto")
        _at_least(self, "max_length", 2, "the context must hold at least 2 tokens")
        _at_least(self, "grad_accum_steps", 1, "1 means no accumulation")
        _at_least(self, "lora_r", 1, "8 is a good start")
        _positive(self, "lora_alpha", "auto gives 2 x lora_r")
        if not self.loraplus_lr_ratio >= 1:
            raise InvalidRequest(f"loraplus_lr_ratio must be at least 1 (1 is plain LoRA), "
                                 f"got {self.loraplus_lr_ratio!r}; try 16",
                                 param="loraplus_lr_ratio")
        _at_least(self, "eval_every", 0, "0 validates at epoch ends only")
        _at_least(self, "save_every", 0, "0 turns checkpoints off")
        _at_least(self, "early_stopping_patience", 0, "0 never stops early")
        _at_least(self, "log_every", 1, "1 logs every step")
        _at_least(self, "checkpoint_models", 0, "0 publishes only the final model")
        _at_least(self, "shards", 1, "1 trains each micro-batch in one pass")
        if self.max_steps is not None:
            _at_least(self, "max_steps", 1, "leave it unset to train all epochs")
        if self.threads is not None:
            _at_least(self, "threads", 1, "leave it unset for torch's choice")
        if not (_is_number(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise InvalidRequest(f"ema_decay must be in [0, 1), got {self.ema_decay!r}; "
                                 "0.99 averages about the last 100 steps, 0 turns it off",
                                 param="ema_decay")
        for key in ("dropout", "lora_dropout", "warmup_ratio"):
            value = getattr(self, key)
            if value != AUTO and not (_is_number(value) and 0 <= value < 1):
                raise InvalidRequest(f"{key} must be in [0, 1), got {value!r}", param=key)
        split = self.valid_split
        if split != AUTO and not (_is_number(split) and 0 <= split < 1):
            raise InvalidRequest(f"valid_split must be a fraction in [0, 1) or auto, got "
                                 f"{split!r}; 0 trains without validation", param="valid_split")
        for key in ("weight_decay", "max_grad_norm", "momentum"):
            value = getattr(self, key)
            if not _is_number(value) or value < 0:
                raise InvalidRequest(f"{key} must be a number >= 0, got {value!r}", param=key)
        for key in ("adam_beta1", "adam_beta2"):
            value = getattr(self, key)
            if not _is_number(value) or not 0 <= value < 1:
                raise InvalidRequest(f"{key} must be in [0, 1), got {value!r}", param=key)

    # -- views -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (what the lineage records)."""
        return asdict(self)

    @classmethod
    def default_of(cls, key: str) -> Any:
        """A field's default (MISSING for the required ones)."""
        spec = {f.name: f for f in fields(cls)}[key]
        if spec.default_factory is not MISSING:
            return spec.default_factory()
        return spec.default

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainConfig:
        """Build from a dict (REST payload, job record); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InvalidRequest(f"unknown training option(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(known))}", param=unknown[0])
        return cls(**doc)

    @property
    def auto_fields(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) == AUTO]


_WHAT = {"base": "base model (namespace/name)", "train_file": "path of the training file",
         "name": "name of the new model (namespace/name)"}


def field_help(name: str) -> str:
    """The help text of a TrainConfig field (the CLI shows it)."""
    for f in fields(TrainConfig):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def field_default(name: str) -> Any:
    """The default of a TrainConfig field (the CLI's flags use it, so it is stated once)."""
    for f in fields(TrainConfig):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{name} has no default: it is required")
    raise KeyError(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(cfg: TrainConfig, key: str, fix: str) -> None:
    value = getattr(cfg, key)
    if value == AUTO:
        return
    if not _is_number(value) or value <= 0:
        raise InvalidRequest(f"{key} must be > 0, got {value!r}; {fix}", param=key)


def _at_least(cfg: TrainConfig, key: str, low: int, fix: str) -> None:
    value = getattr(cfg, key)
    if value == AUTO:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidRequest(f"{key} must be an integer >= {low}, got {value!r}; {fix}",
                             param=key)


# ------------------------------------------------------------------------ auto values


def auto_epochs(n_examples: int) -> int:
    """OpenAI's rule: 3 epochs, more when that makes under 100 example passes, fewer when
    it makes over 25 000."""
    n = max(1, n_examples)
    epochs = DEFAULT_EPOCHS
    if n * epochs < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n))
    elif n * epochs > MAX_TARGET_EXAMPLES:
        epochs = max(1, MAX_TARGET_EXAMPLES // n)
    return epochs


def auto_batch_size(n_examples: int, epochs: int = DEFAULT_EPOCHS,
                    grad_accum_steps: int = 1) -> int:
    """8, or 16 from 1000 examples on (larger batches use a CPU's matrix units better),
    halved while the run would make fewer than `MIN_AUTO_STEPS` optimiser steps, down to
    1: what a small file teaches depends on the number of updates, not on the passes.
    Measured (benchmarks/quality.py --rows persona): 36 chat examples, 3 epochs, all
    projections: batch 8 (15 steps) left 0% of held-out answers in the taught style,
    batch 2 (54 steps) 85%, batch 1 (108 steps) 100%. OpenAI's API likewise picks
    batch 1 for files this small (about 0.2% of the examples)."""
    n = max(1, n_examples)
    size = min(n, 16 if n >= 1000 else 8)
    while size > 1 and math.ceil(n / size) * max(1, epochs) < MIN_AUTO_STEPS * max(
            1, grad_accum_steps):
        size //= 2
    return size


def auto_valid_split(n_examples: int) -> float:
    """10% held out (at most 1000 examples); nothing below 10 examples."""
    if n_examples < 10:
        return 0.0
    return min(0.1, 1000 / n_examples)


def resolve_auto(cfg: TrainConfig, *, task: str, n_train: int, max_length: int,
                 valid_split: float = 0.0, cores: int = 1, fast_bf16: bool = False
                 ) -> TrainConfig:
    """A copy of `cfg` with every `auto` replaced by what the run will use.

    Called once, at the top of a run, from the prepared data: `n_train` training
    examples after the validation split, the `max_length` the data was encoded with, the
    `valid_split` fraction that was held out, the torch threads (`cores`) and whether
    bf16 is fast here. The result is frozen and recorded as the run's lineage: it is
    exactly what ran.
    """
    values: dict[str, Any] = {"task": task, "max_length": max_length,
                              "valid_split": round(valid_split, 6)}
    values["epochs"] = auto_epochs(n_train) if cfg.epochs == AUTO else cfg.epochs
    values["batch_size"] = auto_batch_size(n_train, int(values["epochs"]),
                                           cfg.grad_accum_steps) \
        if cfg.batch_size == AUTO else cfg.batch_size
    if cfg.learning_rate == AUTO:
        values["learning_rate"] = AUTO_LEARNING_RATES[(cfg.method, task)]
    dropout = (0.0 if cfg.method == "lora" else 0.1) if cfg.dropout == AUTO else cfg.dropout
    values["dropout"] = dropout
    if cfg.lora_alpha == AUTO:
        values["lora_alpha"] = 2 * cfg.lora_r
    if cfg.lora_target == AUTO:
        # every projection (QLoRA's finding, and LLaMA-Factory's and Unsloth's default);
        # measured here against PEFT's q,v only (docs/design.md): 40 chat examples taught
        # the style to 100% of held-out answers instead of 0%, and SST-2 from 400
        # sentences scored 0.865 on dev instead of 0.856; steps cost ~1.4x
        values["lora_target"] = [ALL_LINEAR]
    metric = ("accuracy" if task == "classification" else "loss") if cfg.metric == AUTO \
        else cfg.metric
    values["metric"] = metric
    if cfg.precision == AUTO:
        values["precision"] = "bf16" if fast_bf16 else "fp32"
    # optimiser steps of the run drive the validation and checkpoint cadence
    total = run_steps(n_train, int(values["batch_size"]), cfg.grad_accum_steps,
                      int(values["epochs"]), cfg.max_steps)
    if cfg.eval_every == AUTO:
        values["eval_every"] = max(1, math.ceil(total / 10))
    if cfg.save_every == AUTO:
        values["save_every"] = max(1, math.ceil(total / 10))
    # shards need a forward pass without random numbers (training/parallel.py)
    random_forward = cfg.method == "head" or dropout > 0 or (
        cfg.method == "lora" and cfg.lora_dropout > 0)
    if cfg.shards == AUTO:
        values["shards"] = auto_shards(cores, int(values["batch_size"]),
                                       random_forward=random_forward)
    elif int(cfg.shards) > 1 and random_forward:
        raise InvalidRequest("shards > 1 needs a forward pass without dropout (dropout "
                             "and lora_dropout 0, method lora or full): worker threads "
                             "would draw random numbers in no fixed order and runs would "
                             "not repeat; set shards to 1 or the dropouts to 0",
                             param="shards")
    if task == "classification" and metric == "token_accuracy":
        raise InvalidRequest("metric token_accuracy is for causal-lm; use accuracy, "
                             "macro_f1 or loss for classification", param="metric")
    if task == "causal-lm" and metric in ("accuracy", "macro_f1"):
        raise InvalidRequest("metric accuracy / macro_f1 is for classification; use loss "
                             "or token_accuracy for causal-lm", param="metric")
    return replace(cfg, **values)


def run_steps(n_train: int, batch_size: int, grad_accum_steps: int, epochs: int,
              max_steps: int | None) -> int:
    """Optimiser steps of a run: every epoch's windows, capped by `max_steps`."""
    n_batches = math.ceil(max(1, n_train) / batch_size)
    total = steps_per_epoch(n_batches, grad_accum_steps) * epochs
    return min(total, max_steps) if max_steps is not None else total


def auto_shards(cores: int, batch_size: int, *, random_forward: bool) -> int:
    """Two shards (or more on bigger machines, at least 4 rows each) when the forward
    pass is deterministic; else one (plain OpenMP threads)."""
    if random_forward or cores < 2 or batch_size < 2:
        return 1
    return max(1, min(cores, batch_size // 4, 2 if cores < 8 else cores // 4))


def steps_per_epoch(n_batches: int, grad_accum_steps: int) -> int:
    """Optimiser steps in an epoch of `n_batches` micro-batches (a last partial window
    still makes a step)."""
    return max(1, math.ceil(n_batches / grad_accum_steps))
