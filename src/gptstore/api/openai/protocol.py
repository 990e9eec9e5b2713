"""Wire types of the OpenAI-compatible API, all on one base model.

They follow OpenAI's API reference for `/v1/models`, `/v1/chat/completions` and
`/v1/completions`, plus our extension `/v1/classifications`. Fields OpenAI defines
that we do not implement are refused with a 400 naming them (better than silently
ignoring what a caller relies on); unknown extra fields are ignored, as OpenAI's own
server does for forward compatibility. The serving layer translates these into the
engine's plain dataclasses (`gptstore.inference.types`). `tests/conformance` checks every
response against OpenAI's published OpenAPI schemas.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


class OpenAIBaseModel(BaseModel):
    # OpenAI clients may send fields we do not know yet; accept and ignore them.
    model_config = ConfigDict(extra="ignore")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# -- models ------------------------------------------------------------------------


class ModelObject(OpenAIBaseModel):
    """OpenAI's `model` object. (A model *card* is a version's README: catalog/cards.py.)"""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# -- shared ------------------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class PromptTokensDetails(OpenAIBaseModel):
    #: prompt tokens read from the prefix cache instead of computed (shared system
    #: prompts, chat history): with several choices, the fewest any of them was given
    cached_tokens: int = 0


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


Temperature = Annotated[float, Field(ge=0, le=2)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class SamplingFields(OpenAIBaseModel):
    """Sampling knobs common to chat and completions (plus vLLM-style extensions)."""

    model: str
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # OpenAI's limit
    seed: int | None = None
    # token id -> bias in [-100, 100] (JSON's string keys read as integers)
    logit_bias: dict[int, float] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    user: str | None = None
    # extensions (vLLM uses the same names)
    top_k: Annotated[int, Field(ge=0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks, tests)


# -- chat completions ------------------------------------------------------------------


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_unless_assistant(self) -> ChatMessage:
        # OpenAI's schema: only an assistant message (one that called tools) may leave
        # its content out
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs its content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


class TopLogprobEntry(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogprobEntry(TopLogprobEntry):
    top_logprobs: list[TopLogprobEntry] = Field(default_factory=list)


class ChoiceLogprobs(OpenAIBaseModel):
    content: list[LogprobEntry] | None = None
    refusal: list[LogprobEntry] | None = None  # required by OpenAI; we never refuse


class ChatCompletionMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None  # required by OpenAI; we never refuse


FinishReason = Literal["stop", "length"]


class ChatCompletionChoice(OpenAIBaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(OpenAIBaseModel):
    """What a stream chunk adds to its choice. Fields left as None are left out, as OpenAI
    does: `role` comes in the first chunk of a choice only, the last chunk's delta is `{}`
    (OpenAI's schema has no null `role`)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    # no return annotation: pydantic then keeps the model's own JSON schema in /openapi.json
    @model_serializer(mode="wrap")
    def _leave_out_none(self, handler: SerializerFunctionWrapHandler):
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionChunkChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    # null on every chunk but the include_usage one, as OpenAI sends it (its document is
    # stricter here; tests/conformance/openai_schema.py names each such place)
    usage: UsageInfo | None = None


# -- completions ---------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    # 0 only with echo: the prompt comes back scored, nothing is generated (as OpenAI's
    # legacy completions and vLLM allow; evaluation harnesses ask for it)
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None  # OpenAI's limit
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class CompletionLogprobs(OpenAIBaseModel):
    tokens: list[str] = Field(default_factory=list)
    # with echo, the prompt's tokens come first; its first token has no context: null
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(OpenAIBaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(OpenAIBaseModel):
    """A completion, and also each chunk of a completion stream (OpenAI uses one shape)."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None  # None (stream chunks but the usage one) is left out

    @model_serializer(mode="wrap")  # no return annotation: as DeltaMessage's
    def _leave_out_no_usage(self, handler: SerializerFunctionWrapHandler):
        # OpenAI's schema has `usage` optional but not nullable here, and the document's
        # own stream example for /completions has none (chat chunks differ: see ChatCompletionChunk)
        data = handler(self)
        if data.get("usage", ...) is None:
            del data["usage"]
        return data


# -- classifications (our extension) ------------------------------------------------


class ClassificationRequest(OpenAIBaseModel):
    """Classify one text or a list of texts with a classifier model of the store."""

    model: str = Field(description="A classification model of the store, e.g. acme/sentiment.")
    input: str | Annotated[list[str], Field(min_length=1, max_length=256)] = Field(
        description="A text or a list of up to 256 texts."
    )


class LabelScore(OpenAIBaseModel):
    label: str
    probability: float


class ClassificationResult(OpenAIBaseModel):
    index: int
    label: str = Field(description="The most probable label.")
    probabilities: list[LabelScore] = Field(description="Every label, most probable first.")


class ClassificationResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: new_id("clf"))
    object: Literal["classification"] = "classification"
    created: int = Field(default_factory=now)
    model: str
    data: list[ClassificationResult]
    usage: UsageInfo


# -- files --------------------------------------------------------------------------


class FileObject(OpenAIBaseModel):
    """OpenAI's `OpenAIFile`."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None

    @model_serializer(mode="wrap")  # no return annotation: as DeltaMessage's
    def _leave_out_no_details(self, handler: SerializerFunctionWrapHandler):
        # OpenAI's schema has a deprecated string here, not null: left out when empty
        data = handler(self)
        if data.get("status_details", ...) is None:
            del data["status_details"]
        return data


class FileList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(OpenAIBaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# -- fine-tuning jobs -----------------------------------------------------------------


AutoInt = int | Literal["auto"]
AutoFloat = float | Literal["auto"]


class Hyperparameters(OpenAIBaseModel):
    """OpenAI's three hyper-parameters (`"auto"` or a value); ranges are checked by the
    jobs service, which names the field."""

    n_epochs: AutoInt | None = "auto"
    batch_size: AutoInt | None = "auto"
    learning_rate_multiplier: AutoFloat | None = "auto"


class SupervisedMethod(OpenAIBaseModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class FineTuneMethod(OpenAIBaseModel):
    type: str = "supervised"
    supervised: SupervisedMethod | None = None


class CreateFineTuningJobRequest(BaseModel):
    """OpenAI's `CreateFineTuningJobRequest`. Fields beyond OpenAI's are gptstore's
    extensions, sent by the official client with `extra_body`: `adaptation` (lora, full or
    head), `task` (causal-lm or classification), `name` (the new model's store name) and
    any other fine-tuning option of `gptstore finetune --help` (e.g. `lora_r`)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The base: a full model of the store.")
    training_file: str = Field(description="A file id from POST /v1/files, purpose fine-tune.")
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="Deprecated by OpenAI in favour of `method`; accepted.")
    method: FineTuneMethod | None = None
    suffix: str | None = Field(default=None, description="Part of the new model's name.")
    seed: int | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    adaptation: Literal["lora", "full", "head"] | None = Field(
        default=None, description="gptstore: which weights train (default lora).")


class JobError(OpenAIBaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(OpenAIBaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "paused", "succeeded", "failed",
                    "cancelled"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: FineTuneMethod
    user_provided_suffix: str | None = None


class FineTuningJobList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(OpenAIBaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] = Field(default_factory=dict)


class FineTuningJobEventList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class FineTuningJobCheckpoint(OpenAIBaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class FineTuningJobCheckpointList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool
