"""The one Settings object: every knob of gptstore, read from `GPTSTORE_*` variables.

Nothing else in the code reads the environment. Front ends (CLI, server) build one
`Settings` and pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """gptstore settings; each field is read from the variable `GPTSTORE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="GPTSTORE_", extra="ignore")

    home: Path = Field(
        default=Path("~/.gptstore"),
        description="Folder holding the database, blobs, snapshots and run logs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the catalog database "
        "(default: SQLite file gptstore.db in the home; postgresql://... for scale).",
    )
    host: str = Field(default="127.0.0.1", description="Address `gptstore serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `gptstore serve` binds.")
    max_loaded_bytes: int = Field(
        default=4 * 1024**3,
        ge=0,
        description="Memory budget of models and adapters kept loaded by the inference "
        "engine; least recently used ones are evicted beyond it.",
    )
    max_batch: int = Field(
        default=16, ge=1,
        description="Most sequences the inference engine decodes together in one step.",
    )
    max_queue: int = Field(
        default=64, ge=1,
        description="Most requests waiting for a slot; beyond it the API answers 503 "
        "with Retry-After.",
    )
    training_precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="Precision of fine-tuning runs whose own `precision` is auto: auto = "
        "bf16 autocast where this CPU's training matmul measured faster in it (timed once "
        "per machine, cached in the home), else fp32.",
    )
    inference_dtype: Literal["auto", "bfloat16", "float32", "int4"] = Field(
        default="auto",
        description="Weights dtype of served models: auto = whichever of bfloat16 and "
        "float32 measured faster on this CPU (timed once per machine, cached in the home; "
        "both exact); int4 = 4-bit projection weights with bf16 activations "
        "(faster, outputs differ slightly from the exact model).",
    )
    int4_kernel: Literal["auto", "torch", "native", "native-all"] = Field(
        default="auto",
        description="Kernel of 4-bit products when inference_dtype is int4: auto = as "
        "`gptstore doctor` measured on this CPU (timed on first int4 use, cached in the "
        "home); torch = PyTorch's int4 kernel; native = gptstore's for 1-2 row steps "
        "(single streams); native-all = gptstore's for every step (prompts and batches "
        "too).",
    )
    prefix_cache_bytes: int = Field(
        default=256 * 1024**2, ge=0,
        description="Memory per served base for keys/values of prompt prefixes kept for "
        "reuse (a shared system prompt or chat history is computed once); least recently "
        "used blocks are evicted beyond it; 0 turns prefix caching off.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024**2, ge=1,
        description="Largest file `POST /v1/files` accepts (OpenAI's limit); larger "
        "uploads are refused with 413 while they stream in.",
    )
    workers: int = Field(
        default=1, ge=0,
        description="Fine-tuning jobs `gptstore serve` runs at once in child processes "
        "(its in-process worker); 0 leaves jobs to `gptstore worker` processes.",
    )
    job_lease_seconds: float = Field(
        default=30.0, gt=0,
        description="How long a worker's claim on a running job lasts without a "
        "heartbeat (workers renew it every second); a job whose worker stopped for this "
        "long is taken over by another worker and resumes from its last checkpoint.",
    )
    job_nice: int = Field(
        default=10, ge=0, le=19,
        description="Scheduling niceness of job processes, so requests to the server "
        "keep their share of the CPU while a job trains.",
    )
    max_jobs_per_owner: int = Field(
        default=2, ge=1,
        description="Jobs of one owner that run at the same time; the rest wait queued.",
    )
    # -- accounts and limits (docs/security.md) ---------------------------------------
    auth: Literal["auto", "required"] = Field(
        default="auto",
        description="auto: a server bound to a loopback address with no users runs as the "
        "single local admin (no keys); bound elsewhere, or once users exist, every request "
        "needs an API key. required: always.",
    )
    public_read: bool = Field(
        default=False,
        description="Let requests without a key read public models (catalog, /v1/models, "
        "inference) when keys are required.",
    )
    max_request_bytes: int = Field(
        default=8 * 1024**2, ge=1024,
        description="Largest request body outside file uploads; larger ones get 413.",
    )
    max_tokens: int = Field(
        default=4096, ge=1,
        description="Largest max_tokens (new tokens per choice) a request may ask for; "
        "more is refused with 400.",
    )
    max_context: int | None = Field(
        default=None, ge=16,
        description="Cap on the context (prompt plus new tokens) of served models, below "
        "their own; longer prompts are refused with 400.",
    )
    requests_per_minute: int = Field(
        default=600, ge=0,
        description="Requests one API key (or one address without a key) may send per "
        "minute; beyond it 429 with Retry-After. 0: no limit.",
    )
    max_streams_per_key: int = Field(
        default=32, ge=1,
        description="Inference requests of one key running or waiting at once; beyond it "
        "429. Waiting requests are admitted to the engine fairly, in turn across keys.",
    )
    max_running_per_key: int | None = Field(
        default=None, ge=1,
        description="Places in the engine's batch one key may hold at once, even when the "
        "rest are free, so other keys' requests start at once (default: half of "
        "GPTSTORE_MAX_BATCH; the local single user has no cap).",
    )
    max_queued_jobs_per_key: int = Field(
        default=10, ge=1,
        description="Fine-tuning jobs one owner may have queued or running; beyond it 429.",
    )
    preload: str = Field(
        default="",
        description="Models `gptstore serve` loads as it starts, comma-separated (e.g. "
        "HuggingFaceTB/SmolLM2-135M-Instruct), so their first request does not wait for "
        "the load (SmolLM2 on 2 cores: ~4 s); others load on first use.",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0,
        description="On SIGTERM, how long in-flight requests may finish before the server "
        "stops them.",
    )
    offline: bool = Field(
        default=False,
        description="Never try the Hugging Face Hub (pull only built-in models).",
    )
    gc_grace_seconds: int = Field(
        default=3600,
        ge=0,
        description="`gptstore gc` keeps unreferenced blobs younger than this, so it never "
        "races an import that is still writing.",
    )

    def model_post_init(self, __context: object) -> None:
        self.home = self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        """The catalog database URL, defaulting to SQLite inside the home."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'gptstore.db'}"

    @property
    def api_base(self) -> str:
        """The OpenAI-compatible API of `gptstore serve` with these settings, as a client
        on this machine reaches it (`local_url`)."""
        return f"{local_url(self.host, self.port)}/v1"

    @property
    def preload_models(self) -> list[str]:
        """The names in `preload`, in order, without blanks."""
        return [name.strip() for name in self.preload.split(",") if name.strip()]

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def snapshots_dir(self) -> Path:
        return self.home / "snapshots"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    @property
    def files_dir(self) -> Path:
        """Uploaded files under their own names (links into the blob store)."""
        return self.home / "files"


def local_url(host: str, port: int) -> str:
    """`http://host:port` of a server bound to host:port, as a client on the same machine
    reaches it: the loopback address for a server bound to every interface."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


#: read by the native kernels themselves (inference/native.py), once per process and not
#: through Settings: the kernels serve code that has no Settings (tests, benchmarks)
NATIVE_KERNELS_ENV = "GPTSTORE_NATIVE_KERNELS"
_PROCESS_VARIABLES = {
    NATIVE_KERNELS_ENV: ("1", "0 turns off gptstore's own C decode kernels (built with the "
                              "system's C compiler on first use); PyTorch's kernels then "
                              "run every step"),
}


def describe_settings() -> str:
    """A plain-text table of the settings and their variables, for `--help` texts."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        lines.append(f"GPTSTORE_{name.upper()} (default: {default}): {field.description}")
    for variable, (default, description) in _PROCESS_VARIABLES.items():
        lines.append(f"{variable} (default: {default}): {description}")
    return "\n".join(lines)
