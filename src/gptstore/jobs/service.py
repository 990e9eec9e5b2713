"""What callers ask of the jobs service, checked before any row exists.

`create_job` takes an OpenAI-style request (base model, file ids, `n_epochs` /
`batch_size` / `learning_rate_multiplier`, suffix, seed) plus any `TrainConfig` field
as an option, and builds the run's one `TrainConfig` from it: an unknown base, a file
that does not exist or is not for fine-tuning, a value out of range is an
`InvalidRequest` naming the field, and no job row is written. The job then waits in
`validating_files` until a worker checks its files (`validate_job`).

The HTTP routes and the CLI call these functions; the worker runs what they queue.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any

from gptstore.catalog.access import SYSTEM, Principal
from gptstore.catalog.files import FileInfo
from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.errors import InvalidRequest, NotFound, RateLimited
from gptstore.jobs.states import JobStatus
from gptstore.jobs.store import JobInfo, JobStore, new_job_id
from gptstore.training.config import AUTO, AUTO_LEARNING_RATES, TrainConfig

#: OpenAI's ranges for its three hyper-parameters
MAX_EPOCHS = 50
MAX_BATCH_SIZE = 256
MAX_SEED = 2**31 - 1
#: per-epoch checkpoints a job publishes as models (OpenAI keeps the last 3 epochs)
JOB_CHECKPOINT_MODELS = 3
#: TrainConfig fields the service sets itself; a caller may not
SERVICE_FIELDS = frozenset({"base", "train_file", "valid_file", "run_dir", "resume",
                            "threads"})
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def option_names() -> list[str]:
    """TrainConfig fields a job request may set (OpenAI's `extra_body`)."""
    return sorted(f.name for f in fields(TrainConfig) if f.name not in SERVICE_FIELDS)


def _hyper(name: str, value: Any, *, low: float, high: float | None, integer: bool) -> Any:
    if value is None or value == AUTO:
        return AUTO
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, int) or float(value).is_integer()
    if ok:
        ok = value >= low if integer else value > low
        ok = ok and (high is None or value <= high)
    if not ok:
        span = f"an integer from {low:g} to {high:g}" if integer else f"a number > {low:g}"
        raise InvalidRequest(f"hyperparameters.{name} must be {span} or 'auto', got "
                             f"{value!r}", param=f"hyperparameters.{name}")
    return int(value) if integer else float(value)


def _training_file(catalog: Catalog, file_id: str | None, owner: str, param: str
                   ) -> FileInfo | None:
    if file_id is None:
        return None
    try:
        file = catalog.files.get(file_id)
    except NotFound:
        raise InvalidRequest(f"{param}: file {file_id} does not exist; upload it with "
                             "POST /v1/files (purpose fine-tune) first", param=param) from None
    if file.owner != owner:  # another owner's file answers as a missing one
        raise InvalidRequest(f"{param}: file {file_id} does not exist; upload it with "
                             "POST /v1/files (purpose fine-tune) first", param=param)
    if file.purpose != "fine-tune":
        raise InvalidRequest(f"{param}: file {file_id} was uploaded with purpose "
                             f"{file.purpose!r}; training needs a file uploaded with purpose "
                             "'fine-tune'", param=param)
    return file


def _base(catalog: Catalog, model: str, principal: Principal) -> VersionInfo:
    try:
        base = catalog.resolve(model, principal=principal)
    except (NotFound, InvalidRequest) as exc:
        raise InvalidRequest(f"model: {exc.message}; fine-tune one of the store's models "
                             "(GET /v1/models)", param="model") from None
    if base.kind != "full":
        raise InvalidRequest(f"model: {base.ref} is an adapter; fine-tune a full model (its "
                             f"base {base.base})", param="model")
    return base


def fine_tuned_name(owner: str, base: VersionInfo, suffix: str | None, job_id: str) -> str:
    """`owner/<base name>-<suffix or ft>-<6 hex of the job id>` (OpenAI's ft:...:suffix:id),
    cut to the store's name length."""
    tail = f"-{suffix or 'ft'}-{job_id.removeprefix('ftjob-')[:6]}"
    head = base.model.split("/", 1)[1][:96 - len(tail)]
    return f"{owner}/{head}{tail}"


def create_job(catalog: Catalog, store: JobStore, *, owner: str, model: str,
               training_file: str, validation_file: str | None = None,
               n_epochs: Any = AUTO, batch_size: Any = AUTO,
               learning_rate_multiplier: Any = AUTO, suffix: str | None = None,
               seed: int | None = None, metadata: dict[str, str] | None = None,
               options: dict[str, Any] | None = None, principal: Principal = SYSTEM,
               max_active: int | None = None) -> JobInfo:
    """Check a fine-tuning request and queue it (see the module docstring).

    `principal` must be able to read the base (a base it may not see answers as a
    missing one); a user's fine-tunes are private unless the `visibility` option says
    otherwise. `max_active` caps the owner's unfinished jobs (`RateLimited` beyond it).
    """
    options = dict(options or {})
    base = _base(catalog, model, principal)
    if principal.kind == "user":
        options.setdefault("visibility", "private")
    if max_active is not None:
        active = store.count_unfinished(owner)
        if active >= max_active:
            raise RateLimited(f"{owner} already has {active} unfinished fine-tuning jobs, "
                              f"the most allowed (GPTSTORE_MAX_QUEUED_JOBS_PER_KEY); wait "
                              "for one to finish or cancel one", retry_after=60.0)
    train = _training_file(catalog, training_file, owner, "training_file")
    assert train is not None
    _training_file(catalog, validation_file, owner, "validation_file")
    forbidden = sorted(SERVICE_FIELDS & set(options))
    if forbidden:
        raise InvalidRequest(f"{forbidden[0]} is set by the jobs service; leave it out",
                             param=forbidden[0])
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise InvalidRequest(f"unknown fine-tuning option {unknown[0]!r}; the options are "
                             f"{', '.join(option_names())}", param=unknown[0])
    if suffix is not None and not _SUFFIX_RE.match(suffix):
        raise InvalidRequest("suffix must be 1 to 64 letters, digits, '.', '_' or '-', "
                             f"starting with a letter or digit; got {suffix!r}", param="suffix")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                             or not 0 <= seed <= MAX_SEED):
        raise InvalidRequest(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}",
                             param="seed")
    epochs = _hyper("n_epochs", n_epochs, low=1, high=MAX_EPOCHS, integer=True)
    batch = _hyper("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE, integer=True)
    multiplier = _hyper("learning_rate_multiplier", learning_rate_multiplier, low=0,
                        high=None, integer=False)
    job_id = new_job_id()
    name = options.pop("name", None) or fine_tuned_name(owner, base, suffix, job_id)
    if not isinstance(name, str) or not name.startswith(f"{owner}/"):
        raise InvalidRequest(f"name must be in your namespace: {owner}/<name>", param="name")
    if catalog.exists(name):
        raise InvalidRequest(f"name: model {name} already exists; choose another name",
                             param="name")
    if options.get("eval_suite"):
        from gptstore.catalog.evaluations import check_eval_suite

        check_eval_suite(catalog, options["eval_suite"])
    method = options.get("method", "lora")
    task = options.get("task", AUTO)
    if task == AUTO:
        task = (train.report or {}).get("task") or "causal-lm"
    if multiplier != AUTO and "learning_rate" in options:
        raise InvalidRequest("give learning_rate_multiplier or learning_rate, not both",
                             param="learning_rate")
    for option, openai_name, given in (("epochs", "n_epochs", epochs),
                                       ("batch_size", "batch_size", batch),
                                       ("seed", "seed", AUTO if seed is None else seed)):
        if option in options and given != AUTO:
            raise InvalidRequest(f"give {openai_name} or the option {option}, not both",
                                 param=option)
    values: dict[str, Any] = {
        "epochs": epochs, "batch_size": batch, "seed": 0 if seed is None else seed,
        "checkpoint_models": JOB_CHECKPOINT_MODELS, **options,
    }
    if multiplier != AUTO:
        if (method, task) not in AUTO_LEARNING_RATES:
            raise InvalidRequest(f"no default learning rate for method {method!r} and task "
                                 f"{task!r}", param="method")
        values["learning_rate"] = multiplier * AUTO_LEARNING_RATES[(method, task)]
    # the one config of the run: every option checked here, files by id until it runs
    config = TrainConfig(base=base.ref, train_file=training_file, valid_file=validation_file,
                         name=name, **values)
    hyperparameters = {"n_epochs": config.epochs, "batch_size": config.batch_size,
                       "learning_rate_multiplier": multiplier}
    return store.create(owner=owner, model=base.ref, training_file=training_file,
                        validation_file=validation_file, fine_tuned_model=name,
                        suffix=suffix, seed=config.seed, config=config.to_dict(),
                        hyperparameters=hyperparameters, metadata=metadata, job_id=job_id)


def resolved_hyperparameters(job: JobInfo, resolved: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's three hyper-parameters as the run resolved them."""
    lr = resolved.get("learning_rate")
    auto_lr = AUTO_LEARNING_RATES.get((resolved.get("method", ""), resolved.get("task", "")))
    multiplier = job.hyperparameters.get("learning_rate_multiplier", AUTO)
    if isinstance(lr, int | float) and auto_lr:
        multiplier = round(float(lr) / auto_lr, 6)
    return {"n_epochs": resolved.get("epochs"), "batch_size": resolved.get("batch_size"),
            "learning_rate_multiplier": multiplier}


def validate_job(catalog: Catalog, store: JobStore, job: JobInfo, worker: str) -> bool:
    """Check the job's files for its task (errors listed by line); queued when they are
    fine, else failed at `validating_files` with `error.param` naming the file. The
    caller holds the job's lease. Returns whether the job was queued."""
    from gptstore.data.encode import describe_errors, parse_file

    config = job.config
    task = None if config.get("task", AUTO) == AUTO else config["task"]
    checks = [("training_file", job.training_file, config.get("format"))]
    if job.validation_file:
        checks.append(("validation_file", job.validation_file, None))
    labels: list[str] | None = None
    for param, file_id, fmt in checks:
        try:
            file = catalog.files.get(file_id)
            parsed = parse_file(catalog.files.path(file), task=task, format=fmt,
                                label_names=labels)
        except (NotFound, InvalidRequest) as exc:
            return _fail_validation(store, job, worker, param, exc.message)
        if parsed.errors:
            message = describe_errors(parsed.path, parsed.errors).replace(
                "training refuses this file", "the file cannot be trained on")
            return _fail_validation(store, job, worker, param, message)
        task = task or parsed.task
        if param == "training_file" and task == "classification":
            from gptstore.data.formats.classification import label_set

            labels = label_set(parsed.records)  # type: ignore[arg-type]
    return store.release(job.id, worker, JobStatus.QUEUED,
                         event="Files validated, moving job to queued state")


def _fail_validation(store: JobStore, job: JobInfo, worker: str, param: str, message: str
                     ) -> bool:
    code = "invalid_training_file" if param == "training_file" else "invalid_validation_file"
    store.finish(job.id, worker, JobStatus.FAILED, level="error",
                 event=f"Validation of the {param.replace('_', ' ')} failed: {message}",
                 error={"code": code, "message": message, "param": param})
    return False
