"""Every `/v1` response of a real `gptstore serve` against OpenAI's own OpenAPI schemas.

A tiny random model is served over real HTTP; each case sends one request with httpx and
validates the raw JSON body, or every SSE chunk of a stream, against the named component
schema of OpenAI's document (`openai_schema.py`; not the `openai` client's parsed objects,
which accept almost anything). Each case also names the JSON paths that must be present
(`covers`), so a response that stopped carrying, say, logprobs cannot pass by validating
less. Where OpenAI's live API sends what its document forbids, the case names the
`Relaxation` that allows exactly that; see `openai_schema.py`.

How to add a route (the files and fine-tuning routes are next; their schemas are
vendored already):

1. Check that the response schema is vendored (`openai_schema.schema_names()`); if not,
   add it to `ROOTS` in `vendor_openai_schemas.py` and regenerate `openai_schemas.json`
   from OpenAI's `openapi.json` at the commit recorded in it.
2. Add a `Case` to `CASES`: method, path, request body, the schema, `status` for an
   error, `stream=True` for SSE, and `covers` with the paths that prove the interesting
   part of the answer was there. A path may name things the store fixture made with
   `{placeholders}` (see `ids`): e.g. `/v1/fine_tuning/jobs/{job_id}` once a fixture
   has created a job and put its id there.
3. If OpenAI's live API departs from its document at the new place, add a named
   `Relaxation` in `openai_schema.py` with its evidence, and pass it in the case;
   never relax a whole schema, never drop nulls wholesale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai_schema import (
    CHAT_STREAM,
    COMPLETION_ECHO,
    COMPLETION_STREAM,
    Relaxation,
    assert_conforms,
)

from gptstore.catalog.importers import import_path
from gptstore.catalog.repository import Catalog
from gptstore.settings import Settings
from gptstore.testing.server import RemoteServer
from gptstore.testing.tiny import make_tiny_model

pytestmark = pytest.mark.e2e

MODEL = "acme/tiny"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    schema: str
    body: dict[str, Any] | str | None = None  # a str is sent as it is (malformed JSON)
    status: int = 200
    stream: bool = False
    relaxations: tuple[Relaxation, ...] = ()
    covers: tuple[str, ...] = ()  # dotted paths, e.g. "choices.0.logprobs.content.0"


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": CHAT, "max_tokens": 4, "temperature": 0, **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, **extra}


# `ignore_eos` (our extension) makes the tiny random model produce all max_tokens tokens,
# so cases about per-token fields always have tokens to show.
TOKENS = {"ignore_eos": True}
USAGE = {"stream_options": {"include_usage": True}}

CASES = [
    # -- /v1/models -----------------------------------------------------------------
    Case("list-models", "GET", "/v1/models", "ListModelsResponse", covers=("data.0.owned_by",)),
    Case("retrieve-model", "GET", "/v1/models/{model}", "Model", covers=("id",)),
    # -- /v1/chat/completions -------------------------------------------------------
    Case("chat", "POST", "/v1/chat/completions", "CreateChatCompletionResponse", chat(),
         covers=("choices.0.message.content", "usage.total_tokens")),
    Case("chat-logprobs", "POST", "/v1/chat/completions", "CreateChatCompletionResponse",
         chat(logprobs=True, top_logprobs=2, **TOKENS),
         covers=("choices.0.logprobs.content.0.top_logprobs.1.bytes",)),
    Case("chat-logprobs-no-top", "POST", "/v1/chat/completions",
         "CreateChatCompletionResponse", chat(logprobs=True, **TOKENS),
         covers=("choices.0.logprobs.content.0.bytes",)),
    Case("chat-n2", "POST", "/v1/chat/completions", "CreateChatCompletionResponse",
         chat(n=2, temperature=1.0, seed=3), covers=("choices.1.message.role",)),
    Case("chat-stream", "POST", "/v1/chat/completions", "CreateChatCompletionStreamResponse",
         chat(stream=True, **USAGE, **TOKENS), stream=True, relaxations=CHAT_STREAM,
         covers=("choices.0.delta.role", "choices.0.delta.content", "choices.0.finish_reason",
                 "usage.total_tokens")),
    Case("chat-stream-logprobs", "POST", "/v1/chat/completions",
         "CreateChatCompletionStreamResponse",
         chat(stream=True, logprobs=True, top_logprobs=2, **TOKENS), stream=True,
         relaxations=CHAT_STREAM, covers=("choices.0.logprobs.content.0.top_logprobs.1",)),
    Case("chat-stream-n2", "POST", "/v1/chat/completions",
         "CreateChatCompletionStreamResponse",
         chat(stream=True, n=2, temperature=1.0, seed=3, **USAGE), stream=True,
         relaxations=CHAT_STREAM, covers=("choices.0.finish_reason", "usage.total_tokens")),
    # -- /v1/completions ----------------------------------------------------------------
    Case("completion", "POST", "/v1/completions", "CreateCompletionResponse", completion(),
         covers=("choices.0.text", "usage.total_tokens")),
    Case("completion-logprobs-echo", "POST", "/v1/completions", "CreateCompletionResponse",
         completion(logprobs=2, echo=True, **TOKENS), relaxations=COMPLETION_ECHO,
         covers=("choices.0.logprobs.top_logprobs.1", "choices.0.logprobs.text_offset.0")),
    Case("completion-echo-max-tokens-0", "POST", "/v1/completions",
         "CreateCompletionResponse", completion(logprobs=1, echo=True, max_tokens=0),
         relaxations=COMPLETION_ECHO, covers=("choices.0.logprobs.token_logprobs.1",)),
    Case("completion-logprobs-0", "POST", "/v1/completions", "CreateCompletionResponse",
         completion(logprobs=0, **TOKENS), covers=("choices.0.logprobs.top_logprobs.0",)),
    Case("completion-n2-two-prompts", "POST", "/v1/completions", "CreateCompletionResponse",
         completion(prompt=[PROMPT, "Hello"], n=2, temperature=1.0, seed=3),
         covers=("choices.3.text",)),
    Case("completion-stream", "POST", "/v1/completions", "CreateCompletionResponse",
         completion(stream=True, **USAGE, **TOKENS), stream=True, relaxations=COMPLETION_STREAM,
         covers=("choices.0.text", "choices.0.finish_reason", "usage.total_tokens")),
    Case("completion-stream-logprobs-echo", "POST", "/v1/completions",
         "CreateCompletionResponse",
         completion(stream=True, logprobs=2, echo=True, **TOKENS), stream=True,
         relaxations=COMPLETION_STREAM + COMPLETION_ECHO,
         covers=("choices.0.logprobs.top_logprobs.1",)),
    # -- errors -------------------------------------------------------------------------
    Case("error-400-out-of-range", "POST", "/v1/chat/completions", "ErrorResponse",
         chat(temperature=3), status=400, covers=("error.param",)),
    Case("error-400-bad-model-name", "POST", "/v1/chat/completions", "ErrorResponse",
         chat(model="bad name"), status=400, covers=("error.param",)),
    Case("error-400-unsupported-field", "POST", "/v1/completions", "ErrorResponse",
         completion(suffix="!"), status=400, covers=("error.param",)),
    Case("error-400-malformed-json", "POST", "/v1/chat/completions", "ErrorResponse",
         '{"model": ', status=400, covers=("error.message",)),
    Case("error-404-chat-unknown-model", "POST", "/v1/chat/completions", "ErrorResponse",
         chat(model="acme/nope"), status=404, covers=("error.code",)),
    Case("error-404-stream-unknown-model", "POST", "/v1/chat/completions", "ErrorResponse",
         chat(model="acme/nope", stream=True), status=404, covers=("error.code",)),
    Case("error-404-retrieve-unknown-model", "GET", "/v1/models/acme/nope", "ErrorResponse",
         status=404, covers=("error.message",)),
    # an unrouted path answers in the envelope too, not Starlette's {"detail": ...}
    Case("error-404-no-such-route", "GET", "/v1/no-such-route", "ErrorResponse", status=404,
         covers=("error.message",)),
    Case("error-405-wrong-method", "DELETE", "/v1/chat/completions", "ErrorResponse",
         status=405, covers=("error.message",)),
    # -- /v1/files (the store fixture uploads `{file_id}`, `{spare_file_id}`) -----------
    Case("list-files", "GET", "/v1/files", "ListFilesResponse",
         covers=("data.0.filename", "first_id", "last_id")),
    Case("retrieve-file", "GET", "/v1/files/{file_id}", "OpenAIFile", covers=("bytes",)),
    Case("delete-file", "DELETE", "/v1/files/{spare_file_id}", "DeleteFileResponse",
         covers=("deleted",)),
    Case("error-404-file", "GET", "/v1/files/file-nope", "ErrorResponse", status=404,
         covers=("error.param",)),
    Case("error-400-upload-not-multipart", "POST", "/v1/files", "ErrorResponse",
         {"purpose": "fine-tune"}, status=400, covers=("error.param",)),
    # -- /v1/fine_tuning/jobs (the fixture's `{job_id}` has succeeded) --------------------
    Case("list-jobs", "GET", "/v1/fine_tuning/jobs", "ListPaginatedFineTuningJobsResponse",
         covers=("data.0.fine_tuned_model",)),
    Case("retrieve-job", "GET", "/v1/fine_tuning/jobs/{job_id}", "FineTuningJob",
         covers=("fine_tuned_model", "result_files.0", "hyperparameters.n_epochs",
                 "method.supervised.hyperparameters.batch_size", "trained_tokens",
                 "finished_at")),
    Case("list-job-events", "GET", "/v1/fine_tuning/jobs/{job_id}/events?limit=100",
         "ListFineTuningJobEventsResponse", covers=("data.0.message", "has_more")),
    Case("list-job-checkpoints", "GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints",
         "ListFineTuningJobCheckpointsResponse",
         covers=("data.0.metrics.train_loss", "data.0.fine_tuned_model_checkpoint")),
    Case("error-400-job-unknown-base", "POST", "/v1/fine_tuning/jobs", "ErrorResponse",
         {"model": "acme/nope", "training_file": "file-nope"}, status=400,
         covers=("error.param",)),
    Case("error-409-cancel-finished-job", "POST", "/v1/fine_tuning/jobs/{job_id}/cancel",
         "ErrorResponse", status=409, covers=("error.message",)),
    Case("error-404-job", "GET", "/v1/fine_tuning/jobs/ftjob-nope", "ErrorResponse",
         status=404, covers=("error.message",)),
]



@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    root = tmp_path_factory.mktemp("conformance")
    home = root / "home"
    catalog = Catalog(Settings(home=home))
    import_path(catalog, make_tiny_model("llama", root / "tiny", seed=1), MODEL)
    catalog.close()
    with RemoteServer(home, env={"GPTSTORE_INFERENCE_DTYPE": "float32"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def ids(server: RemoteServer) -> dict[str, str]:
    """What `{placeholders}` in a case's path stand for: the model, two uploaded files
    and a fine-tuning job run to the end by the server's worker (the upload and the
    create answers are checked here too)."""
    rows = "".join(json.dumps({"messages": [
        {"role": "user", "content": f"Say {i}."},
        {"role": "assistant", "content": f"{i}."}]}) + "\n" for i in range(24))

    def upload(name: str) -> dict[str, Any]:
        resp = httpx.post(server.url + "/v1/files", data={"purpose": "fine-tune"},
                          files={"file": (name, rows.encode())}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert_conforms(resp.json(), "OpenAIFile", what="POST /v1/files")
        return dict(resp.json())

    file_id = upload("train.jsonl")["id"]
    spare = upload("spare.jsonl")["id"]
    resp = httpx.post(server.url + "/v1/fine_tuning/jobs", timeout=60, json={
        "model": MODEL, "training_file": file_id,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}})
    assert resp.status_code == 200, resp.text
    assert_conforms(resp.json(), "FineTuningJob", what="POST /v1/fine_tuning/jobs")
    job_id = resp.json()["id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        assert_conforms(job, "FineTuningJob", what=f"GET a {job['status']} job")
        time.sleep(0.3)
    assert job["status"] == "succeeded", job
    return {"model": MODEL, "file_id": file_id, "spare_file_id": spare, "job_id": job_id}


def fetch(server: RemoteServer, case: Case, ids: dict[str, str]) -> list[Any]:
    """The JSON body, or every chunk of the SSE stream, of the case's request."""
    url = server.url + case.path.format(**ids)
    kwargs: dict[str, Any] = {"timeout": 120}
    if isinstance(case.body, str):
        kwargs |= {"content": case.body, "headers": {"Content-Type": "application/json"}}
    elif case.body is not None:
        kwargs["json"] = case.body
    if case.stream:
        return stream_chunks(case.method, url, case.status, **kwargs)
    resp = httpx.request(case.method, url, **kwargs)
    assert resp.status_code == case.status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return [resp.json()]


def stream_chunks(method: str, url: str, status: int = 200, **kwargs: Any) -> list[Any]:
    """Every `data:` chunk of an SSE answer, checking that it ends with `[DONE]`."""
    with httpx.stream(method, url, **kwargs) as resp:
        assert resp.status_code == status, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert all(line.startswith("data: ") for line in lines), lines
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def present(document: Any, path: str) -> bool:
    """Whether the dotted path leads to a value other than null."""
    node = document
    for step in path.split("."):
        if isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        elif isinstance(node, dict) and step in node:
            node = node[step]
        else:
            return False
    return node is not None


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_response_conforms(server: RemoteServer, ids: dict[str, str], case: Case) -> None:
    documents = fetch(server, case, ids)
    for i, document in enumerate(documents):
        what = f"{case.method} {case.path}" + (f" chunk {i}" if case.stream else "")
        assert_conforms(document, case.schema, relaxations=case.relaxations, what=what)
    for path in case.covers:
        assert any(present(d, path) for d in documents), (
            f"{case.id}: no response document has {path}, so that part of "
            f"{case.schema} went unchecked: {documents}")


def test_chat_stream_sends_role_once_per_choice(server: RemoteServer) -> None:
    """OpenAI sends `delta.role` in the first chunk of each choice and leaves it out
    afterwards (the schema forbids `role: null`, but not a repeated role)."""
    body = chat(stream=True, n=2, temperature=1.0, seed=3, max_tokens=3, **TOKENS)
    chunks = stream_chunks("POST", server.url + "/v1/chat/completions", json=body,
                           timeout=120)
    for index in (0, 1):
        deltas = [c["choices"][0]["delta"] for c in chunks
                  if c["choices"] and c["choices"][0]["index"] == index]
        assert len(deltas) >= 2  # role, (tokens,) finish
        assert deltas[0]["role"] == "assistant"
        assert all("role" not in d for d in deltas[1:]), deltas
