"""Wire types of the store's own API (`/api/...`, `/healthz`), all on one base model.

What goes out, separate from what is stored (the full-stack FastAPI template's
`XPublic` types): the router builds these from the catalog's dataclasses
(`catalog.repository`), which know nothing of pydantic or HTTP. Every route names its
type as `response_model`, so `/openapi.json` documents each response and FastAPI drops
any field a type does not declare.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Sort = Literal["name", "updated", "downloads", "likes"]


class StoreBaseModel(BaseModel):
    # Built from the catalog's frozen dataclasses by attribute name.
    model_config = ConfigDict(from_attributes=True)


# -- models and versions --------------------------------------------------------------


class VersionSummary(StoreBaseModel):
    """A model's latest version as a listing shows it."""

    number: int = Field(description="Version number (1, 2, ...); `namespace/name@N`.")
    kind: Literal["full", "adapter"] = Field(
        description="`full`: all weights; `adapter`: a LoRA adapter on its base version.")
    base: str | None = Field(
        description="`namespace/name@N` of the base version (fine-tunes, adapters).")
    size: int = Field(description="Bytes of the version's files.")
    metrics: dict[str, float] = Field(
        description="Headline metrics: validation metrics of the published weights "
                    "(empty when none were measured).")


class ModelSummary(StoreBaseModel):
    """A model in a listing."""

    name: str = Field(description="`namespace/name`, the name every API takes.")
    namespace: str
    task: str = Field(description="`causal-lm` or `classification`.")
    description: str
    tags: list[str]
    license: str | None
    visibility: str = Field(description="`public`, or a restricted visibility.")
    created_at: datetime
    updated_at: datetime = Field(description="When the newest version was published.")
    downloads: int
    likes: int
    requests: int = Field(description="Inference requests served (counted in batches, "
                                      "written every few seconds).")
    rating: float = Field(description="Mean of the 1-5 star ratings; 0 when unrated.")
    rating_count: int = Field(description="How many users rated the model.")
    latest: VersionSummary | None = Field(description="The newest version.")


class FilePublic(StoreBaseModel):
    path: str = Field(description="Relative path inside the version, e.g. `config.json`.")
    digest: str = Field(description="`sha256:<hex>` of the file's bytes.")
    size: int


class EvaluationPublic(StoreBaseModel):
    """A version's result on an evaluation suite."""

    suite: str
    task: str
    metric: str = Field(description="The suite's ranking metric.")
    higher_is_better: bool
    score: float | None
    mode: str = Field(description="`classifier`, or `k-shot` for a model asked.")
    examples: int
    data_digest: str
    current: bool = Field(description="Scored on the suite's current data, so ranked on "
                                      "`/api/leaderboards/{suite}`.")
    evaluated_at: datetime


class VersionPublic(StoreBaseModel):
    """One version with its lineage, metrics and files."""

    ref: str = Field(description="`namespace/name@N`.")
    number: int
    kind: Literal["full", "adapter"]
    task: str
    base: str | None
    manifest_digest: str = Field(description="Digest of the manifest listing the files.")
    size: int
    created_at: datetime
    lineage: dict[str, Any] = Field(
        description="Where the version comes from: base, data set digests, "
                    "hyperparameters, seed, code version, ...")
    metrics: dict[str, Any] = Field(
        description="All recorded metrics (`final`, `best`, `train`, `curves`, ...).")
    files: list[FilePublic]
    evaluations: list[EvaluationPublic] = Field(
        default_factory=list, description="Results on evaluation suites, by suite name.")


class ModelPublic(ModelSummary):
    """One model with every version, oldest first."""

    versions: list[VersionPublic]


class ModelUpdate(BaseModel):
    """What `PATCH /api/models/{namespace}/{name}` may change; fields left out stay."""

    model_config = ConfigDict(extra="forbid")
    visibility: Literal["private", "org", "public"] | None = Field(
        default=None, description="private (its owner), org (the owner's organisations) or "
        "public: publish or unpublish. Needs an admin-scope key and the admin right on the "
        "namespace.")
    description: str | None = Field(default=None, description="Markdown, up to 2,000 "
                                                              "characters.")
    tags: list[str] | None = Field(default=None, description="Up to 20 tags of a-z, 0-9, "
                                                             "`.`, `_`, `+`, `-`.")


class ModelPage(StoreBaseModel):
    """One page of a listing. Pass `next_cursor` back as `cursor` for the next page."""

    data: list[ModelSummary]
    next_cursor: str | None = Field(
        description="Opaque cursor of the next page; null on the last page.")
    has_more: bool


# -- meta ---------------------------------------------------------------------------


class Health(StoreBaseModel):
    status: Literal["ok"] = "ok"
    version: str = Field(description="gptstore's version.")


class EngineStats(StoreBaseModel):
    """What the inference engine is doing; only `started` until a request builds it."""

    started: bool
    running: int | None = Field(default=None, description="Requests being decoded.")
    waiting: int | None = Field(default=None, description="Requests queued.")
    steps: int | None = Field(default=None, description="Scheduler steps so far.")
    loaded: dict[str, list[str]] | None = Field(
        default=None, description="Loaded base weights -> their loaded adapter folders.")
    step_threads: dict[str, int] | None = Field(
        default=None, description="Loaded base -> the intra-op threads its steps run with "
                                  "(measured on loading, checked on its steps).")
    base_bytes: int | None = Field(default=None, description="Bytes of loaded bases.")
    adapter_bytes: int | None = Field(default=None, description="Bytes of loaded adapters.")
    kv_cache_bytes: int | None = Field(
        default=None, description="Bytes of the hand-written decoders' KV caches (Llama, "
                                  "GPT-2 families): the running sequences' keys/values and "
                                  "an idle base's warm slot.")
    prefix_cache_bytes: int | None = Field(
        default=None, description="Bytes of cached prompt-prefix keys/values.")
    prefix_cache_blocks: int | None = Field(default=None, description="Cached prefix blocks.")
    prefix_cache_hit_tokens: int | None = Field(
        default=None, description="Prompt tokens served from the prefix cache so far.")
    prefix_cache_evicted_blocks: int | None = Field(
        default=None, description="Prefix blocks evicted under the memory budget so far.")


# -- files ----------------------------------------------------------------------------


class ReportIssue(StoreBaseModel):
    """One problem of a training file."""

    rule: str = Field(description="What is wrong, as a short code (e.g. `bad_json`).")
    message: str = Field(description="What is wrong and how to fix it.")
    line: int | None = Field(description="1-based line (or CSV row); none for the file.")
    severity: Literal["error", "warning"]


class TokenCounts(StoreBaseModel):
    min: int
    mean: float
    max: int
    total: int


class FileReport(StoreBaseModel):
    """The validation report of a fine-tune file (`gptstore data validate`), made on upload
    without a tokenizer (token counts and the time estimate need a base model)."""

    id: str = Field(description="The file id (`file-...`).")
    filename: str
    ok: bool = Field(description="False when training would refuse the file.")
    format: str | None = Field(description="The format the file was read as, if any.")
    task: str | None = Field(description="The task the format trains.")
    examples: int = Field(description="Valid records (lines, rows, documents).")
    error_count: int
    warning_count: int
    errors: list[ReportIssue] = Field(description="The first errors, by line.")
    warnings: list[ReportIssue] = Field(description="The first warnings, by line.")
    duplicates: int
    label_names: list[str] | None = Field(description="Classification: the label set.")
    label_distribution: dict[str, int] | None = Field(
        description="Classification: examples per label.")
    tokens: TokenCounts | None = None
    truncated: int | None = None
    estimated_training_seconds: float | None = None
