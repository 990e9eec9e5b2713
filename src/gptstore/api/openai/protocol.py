"""Wire types of the OpenAI-compatible API, all on one base model.

They follow OpenAI's API reference for `/v1/models`, `/v1/chat/completions` and
`/v1/completions`, plus our extension `/v1/classifications`. Fields OpenAI defines
that we do not implement are refused with a 400 naming them (better than silently
ignoring what a caller relies on); unknown extra fields are ignored, as OpenAI's own
server does for forward compatibility. The serving layer translates these into the
engine's plain dataclasses (`gptstore.inference.types`).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


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
    stop: str | list[str] | None = None
    seed: int | None = None
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


class ChatCompletionMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


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
    system_fingerprint: str | None = None


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


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
    usage: UsageInfo | None = None


# -- completions ---------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class CompletionLogprobs(OpenAIBaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(OpenAIBaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


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
