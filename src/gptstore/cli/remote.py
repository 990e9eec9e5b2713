"""`gptstore generate`, `gptstore chat` and `gptstore classify` through a running
`gptstore serve` of the same store, as `ollama run` talks to the Ollama server.

A one-shot command that runs the model in its own process spends ~4 s before the first
token on importing torch and transformers and loading the model (2-core Zen 4 EPYC;
docs/design.md, "The CLI and a running server"); a server that has the model loaded
answers in a fraction of a second. So `gptstore serve` records where it listens in its
home (api/runtime.py: address and process id, written atomically, removed when it
stops), and the two commands use that server when the record is there, its process is
alive and it answers `/healthz` within `PROBE_TIMEOUT_S`: the same store (the record
is in the home the command reads), the same engine code and chat template
(`render_chat_prompt` on both sides), so the same answer. A server with users wants a
key: the commands send `GPTSTORE_API_KEY` when it is set, and where the server refuses
them (401 or 403) they run the model in their own process as before. `--local` skips
the server.

Knows the OpenAI HTTP API as the server speaks it; nothing of the engine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from gptstore.api.runtime import PROBE_TIMEOUT_S
from gptstore.errors import GptStoreError, InvalidRequest, NotFound, Unavailable

API_KEY_ENV = "GPTSTORE_API_KEY"


class Refused(Exception):
    """The server would not serve this client (401 / 403), or was gone before the
    request reached it: run the model locally."""


def _headers() -> dict[str, str]:
    key = os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error(status: int, body: bytes) -> Exception:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace").strip() or f"HTTP {status}"
    if status in (401, 403):
        return Refused(message)
    if status == 404:
        return NotFound(message)
    if status in (400, 413, 422):
        return InvalidRequest(message)
    if status in (429, 503):
        return Unavailable(message)
    return GptStoreError(f"the server answered {status}: {message}")


def stream_text(url: str, model: str, params: dict[str, Any], *,
                messages: list[dict[str, str]] | None = None,
                prompt: str | None = None) -> Iterator[str]:
    """The answer's text as it streams from the server: a chat completion of `messages`,
    or with `prompt` a completion of that raw text. `params`: max_tokens, temperature,
    top_p, seed. Raises `Refused` (before any text) where the server wants another key
    or is gone, else the error it answered, as the CLI's own errors."""
    import httpx

    body: dict[str, Any] = {"model": model, "stream": True,
                            **{k: v for k, v in params.items() if v is not None}}
    if messages is not None:
        path, body["messages"] = "/v1/chat/completions", messages
    else:
        path, body["prompt"] = "/v1/completions", prompt
    timeout = httpx.Timeout(None, connect=PROBE_TIMEOUT_S * 4)
    try:
        yield from _stream(url + path, body, timeout, chat=messages is not None)
    except httpx.ConnectError as exc:  # stopped since it answered the probe
        raise Refused(str(exc)) from exc
    except httpx.HTTPError as exc:
        raise Unavailable(f"the server at {url} stopped answering ({exc}); run the "
                          "command again, or with --local") from exc


def _stream(url: str, body: dict[str, Any], timeout: Any, *, chat: bool) -> Iterator[str]:
    import httpx

    with httpx.stream("POST", url, json=body, headers=_headers(), timeout=timeout) as response:
        if response.status_code != 200:
            raise _error(response.status_code, response.read())
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise GptStoreError(chunk["error"].get("message", "the server failed"))
            for choice in chunk.get("choices") or []:
                text = choice["delta"].get("content") if chat else choice.get("text")
                if text:
                    yield text


#: texts per `/v1/classifications` request (the API's limit)
CLASSIFY_BATCH = 256


def classify(url: str, model: str, texts: list[str]) -> list[dict[str, float]]:
    """Each text's probability per label, from the server's `/v1/classifications`.
    Raises `Refused` where the server wants another key or is gone, else the error it
    answered, as the CLI's own errors."""
    import httpx

    timeout = httpx.Timeout(None, connect=PROBE_TIMEOUT_S * 4)
    out: list[dict[str, float]] = []
    for start in range(0, len(texts), CLASSIFY_BATCH):
        body = {"model": model, "input": texts[start:start + CLASSIFY_BATCH]}
        try:
            response = httpx.post(url + "/v1/classifications", json=body, headers=_headers(),
                                  timeout=timeout)
        except httpx.ConnectError as exc:  # stopped since it answered the probe
            raise Refused(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise Unavailable(f"the server at {url} stopped answering ({exc}); run the "
                              "command again, or with --local") from exc
        if response.status_code != 200:
            raise _error(response.status_code, response.content)
        results = sorted(response.json()["data"], key=lambda r: r["index"])
        out += [{p["label"]: p["probability"] for p in r["probabilities"]} for r in results]
    return out
