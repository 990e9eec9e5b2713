"""The schema helper itself: the vendored document is whole, the validator finds and
names violations, and each relaxation accepts null at its one place and nowhere else."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from openai_schema import (
    CHAT_CHUNK_FINISH_REASON,
    CHAT_STREAM,
    COMPLETION_STREAM,
    Relaxation,
    assert_conforms,
    document,
    schema_document,
    schema_names,
    validator,
    violations,
)
from vendor_openai_schemas import PREFIX, ROOTS, closure, refs_in

JOBS_SERVICE = [
    "OpenAIFile", "ListFilesResponse", "DeleteFileResponse",
    "FineTuningJob", "ListPaginatedFineTuningJobsResponse",
    "FineTuningJobEvent", "ListFineTuningJobEventsResponse",
    "FineTuningJobCheckpoint", "ListFineTuningJobCheckpointsResponse",
]


def chat_reply(**choice: object) -> dict[str, object]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "acme/tiny",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "Paris", "refusal": None},
                     **choice}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def chat_chunk(**choice: object) -> dict[str, object]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "acme/tiny", "usage": None,
        "choices": [{"index": 0, "delta": {"content": "Par"}, "finish_reason": None,
                     "logprobs": None, **choice}],
    }


def test_vendored_subset_is_closed_and_matches_its_roots() -> None:
    schemas = document()["components"]["schemas"]
    assert document()["x-vendored"]["roots"] == ROOTS
    for name in (*ROOTS, *JOBS_SERVICE):
        assert name in schemas
    for name, schema in schemas.items():
        for ref in refs_in(schema):
            assert ref.startswith(PREFIX) and ref.removeprefix(PREFIX) in schemas, (name, ref)
    # nothing vendored that no root reaches (a hand-edit would show here)
    assert list(closure(schemas, ROOTS)) == schema_names()


@pytest.mark.parametrize("name", schema_names())
def test_every_vendored_schema_is_a_valid_2020_12_schema(name: str) -> None:
    Draft202012Validator.check_schema(schema_document()["components"]["schemas"][name])


def test_a_conforming_reply_passes() -> None:
    assert violations(chat_reply(), "CreateChatCompletionResponse") == []


def test_each_violation_is_named_by_its_json_path() -> None:
    reply = chat_reply(logprobs={"content": []})
    del reply["choices"][0]["message"]["refusal"]  # type: ignore[index]
    reply["system_fingerprint"] = None
    with pytest.raises(AssertionError) as info:
        assert_conforms(reply, "CreateChatCompletionResponse", what="the reply")
    text = str(info.value)
    assert "the reply does not conform to OpenAI's CreateChatCompletionResponse" in text
    assert "(3 violations)" in text
    assert "$.choices[0].message: 'refusal' is a required property" in text
    # inside anyOf [object, null]: the reason of the object branch is listed
    assert "$.choices[0].logprobs: 'refusal' is a required property" in text
    assert "$.system_fingerprint: None is not of type 'string'" in text


def test_refs_are_followed() -> None:
    # Model is reached from ListModelsResponse only through $ref
    bad = {"object": "list", "data": [{"id": "acme/tiny", "object": "model", "created": 1}]}
    assert violations(bad, "ListModelsResponse") == [
        "$.data[0]: 'owned_by' is a required property"]


def test_unknown_schema_names_the_fix() -> None:
    with pytest.raises(KeyError, match=r"ROOTS in vendor_openai_schemas\.py"):
        validator("CreateEmbeddingResponse")


def test_chat_stream_relaxations_accept_exactly_their_nulls() -> None:
    chunk = chat_chunk()
    assert len(violations(chunk, "CreateChatCompletionStreamResponse")) == 4  # finish_reason: 2
    assert violations(chunk, "CreateChatCompletionStreamResponse", CHAT_STREAM) == []
    # other nulls stay errors, and so do wrong values at the relaxed places
    assert violations(chat_chunk(delta={"role": None}), "CreateChatCompletionStreamResponse",
                      CHAT_STREAM) != []
    assert violations(chat_chunk(finish_reason="done"), "CreateChatCompletionStreamResponse",
                      CHAT_STREAM) != []
    assert violations(chat_chunk(logprobs={"content": []}),
                      "CreateChatCompletionStreamResponse", CHAT_STREAM) != []
    # the non-streaming reply is not relaxed
    assert violations(chat_reply(finish_reason=None), "CreateChatCompletionResponse") != []


def test_completion_stream_relaxation_is_only_for_chunks() -> None:
    chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "acme/tiny",
             "choices": [{"index": 0, "text": "Par", "logprobs": None,
                          "finish_reason": None}]}
    assert violations(chunk, "CreateCompletionResponse") != []
    assert violations(chunk, "CreateCompletionResponse", COMPLETION_STREAM) == []


def test_a_relaxation_cannot_outlive_its_reason() -> None:
    already_nullable = Relaxation("param", "Error", "/properties/param", "it is anyOf null")
    with pytest.raises(ValueError, match="not needed any more"):
        validator("Error", (already_nullable,))
    gone = Relaxation("gone", CHAT_CHUNK_FINISH_REASON.schema, "/properties/nope", "gone")
    with pytest.raises(ValueError, match="not in the document any more"):
        validator(gone.schema, (gone,))


def test_exclusive_bounds_mean_what_openai_wrote() -> None:
    # OpenAI's own FineTuningJob example (learning_rate_multiplier 1.0), plus the
    # required `error` that the example leaves out
    example = json.loads(document()["components"]["schemas"]["FineTuningJob"]
                         ["x-oaiMeta"]["example"])
    example["error"] = None
    assert violations(example, "FineTuningJob") == []
    example["hyperparameters"]["learning_rate_multiplier"] = 0.05
    assert violations(example, "FineTuningJob") == []
    example["hyperparameters"]["learning_rate_multiplier"] = 0  # "> 0": still refused
    assert violations(example, "FineTuningJob") != []
