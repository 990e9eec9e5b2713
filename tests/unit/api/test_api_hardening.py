"""Bad input over HTTP: malformed uploads each get a clear 4xx and leave the store (rows
and blobs) as it was; oversized and deeply nested request bodies; request ids; no stack
trace ever reaches a client."""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gptstore.api.app import build_app
from gptstore.catalog.repository import Catalog
from gptstore.catalog.screen import MAX_LINE_BYTES, json_depth
from gptstore.settings import Settings


def _zip_bomb() -> bytes:
    """A zip whose one member inflates 10,000-fold (100 MB of zeros from ~100 KB)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train.jsonl", b"\0" * (100 * 1024**2))
    return out.getvalue()


def _store_state(catalog: Catalog) -> tuple[Any, ...]:
    files = catalog.files.page()[0]
    blobs = sorted(str(b) for b in catalog.blobs.iter_blobs())
    tmp = sorted(p.name for p in catalog.settings.blobs_dir.rglob("*") if p.is_file())
    return tuple(f.id for f in files), tuple(blobs), tuple(tmp)


MALFORMED: dict[str, tuple[str, bytes, str]] = {
    # case -> (file name, bytes, a phrase the error message must hold)
    "invalid utf-8": ("train.jsonl", b'{"text": "caf\xe9"}\n', "not UTF-8"),
    "one 100 MB line": ("train.jsonl", b'{"text": "' + b"a" * (100 * 1024**2) + b'"}\n',
                        f"longer than {MAX_LINE_BYTES} bytes"),
    "JSON nested 100,000 deep": ("train.jsonl", b'{"text": ' + b"[" * 100_000
                                 + b"]" * 100_000 + b"}\n", "nested deeper"),
    "zip bomb named .jsonl": ("train.jsonl", _zip_bomb(), "a zip archive"),
    "pickle renamed .safetensors": ("model.safetensors", pickle.dumps({"w": [1.0] * 10}),
                                    "not a training-file type"),
    "pickle renamed .jsonl": ("train.jsonl", pickle.dumps({"w": [1.0] * 10}),
                              "a Python pickle"),
    "path traversal": ("../../etc/passwd.jsonl", b'{"text": "a"}\n', "not a plain name"),
    "NUL bytes": ("train.txt", b"hello\x00world\n", "NUL byte"),
    "control characters in the name": ("tr\x1bain.jsonl", b'{"text": "a"}\n',
                                       "control characters"),
}


@pytest.fixture
def big_client(settings: Settings) -> Iterator[TestClient]:
    settings.max_upload_bytes = 200 * 1024**2  # so the 100 MB cases reach the screen
    with TestClient(build_app(settings)) as client:
        yield client


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_upload_gets_a_clear_400_and_changes_nothing(big_client: TestClient,
                                                                  case: str) -> None:
    catalog = big_client.app.state.catalog  # type: ignore[attr-defined]
    ok = big_client.post("/v1/files", data={"purpose": "fine-tune"},
                         files={"file": ("good.jsonl", b'{"text": "fine"}\n')})
    assert ok.status_code == 200, ok.text
    before = _store_state(catalog)
    name, data, phrase = MALFORMED[case]
    response = big_client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": (name, data)})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert phrase in error["message"] and error["param"] == "file"
    assert _store_state(catalog) == before


def test_the_depth_scanner_skips_strings_and_escapes() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[\\"[{"}]}')[0] == 3
    assert json_depth(b'{"a": "\\\\", "b": [[1]]}')[0] == 3
    assert json_depth(b'"[[[[["')[0] == 0


def test_a_body_over_the_limit_gets_413(settings: Settings) -> None:
    settings.max_request_bytes = 4096
    with TestClient(build_app(settings)) as client:
        body = {"model": "acme/m", "prompt": "x" * 10_000}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 413
        assert "GPTSTORE_MAX_REQUEST_BYTES" in response.json()["error"]["message"]
        assert response.headers["x-request-id"].startswith("req_")

        def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"model": "acme/m", "prompt": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        response = client.post("/v1/completions", content=chunked(),
                               headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_a_deeply_nested_body_gets_400(client: TestClient) -> None:
    deep = b'{"model": "acme/m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post("/v1/completions", content=deep,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_gets_400_saying_so(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", content=b"{bad json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is None and error["type"] == "invalid_request_error"
    assert error["message"].startswith("the request body is not valid JSON (character 1: ")


@pytest.mark.parametrize(("body", "param", "message"), [
    # a list that fits no member of `str | list[str]`: the list member says why
    ({"stop": list("abcde")}, "stop", "List should have at most 4 items"),
    # a value of neither type: every member's message, at the field's own path
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content",
     "Input should be a valid string; or Input should be a valid list"),
    # inside the list member: the part that is wrong, not the union's member names
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages.0.content.0.type", "Input should be 'text'"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0",
     "Value error, a user message needs its content"),
])
def test_validation_errors_name_the_field_not_the_union_member(
        client: TestClient, body: dict[str, Any], param: str, message: str) -> None:
    request = {"model": "acme/m", "messages": [{"role": "user", "content": "hi"}], **body}
    response = client.post("/v1/chat/completions", json=request)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(f"{param}: {message}")


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    mine = client.get("/healthz", headers={"x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    made = client.get("/healthz", headers={"x-request-id": "bad id\nwith newline"})
    assert made.headers["x-request-id"].startswith("req_")
    assert client.get("/healthz").headers["x-request-id"] != made.headers["x-request-id"]


def test_an_unexpected_error_is_a_500_envelope_and_one_log_line(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("secret internal detail")

    client.app.add_api_route("/boom", broken)  # type: ignore[attr-defined]
    with caplog.at_level(logging.ERROR, logger="gptstore.api"):
        response = client.get("/boom")
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert response.json() == {"error": {
        "message": f"internal error; quote request id {request_id} when reporting it",
        "type": "server_error", "param": None, "code": None}}
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    errors = [r for r in caplog.records if r.name == "gptstore.api"]
    assert len(errors) == 1 and request_id in errors[0].getMessage()
    assert errors[0].exc_info is not None  # the traceback stays on the server


def test_every_error_response_is_logged_once_with_its_id(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gptstore.api"):
        response = client.get("/api/models/acme/missing")
    assert response.status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "gptstore.api"]
    assert lines == [f"request {response.headers['x-request-id']} GET "
                     f"/api/models/acme/missing -> 404 in {lines[0].rsplit(' in ', 1)[1]}"]
