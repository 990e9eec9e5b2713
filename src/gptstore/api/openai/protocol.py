"""Wire types of the OpenAI-compatible API, all on one base model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class OpenAIBaseModel(BaseModel):
    # OpenAI clients send fields we may not know yet; accept and ignore them.
    model_config = ConfigDict(extra="ignore")


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
