"""One place that turns `GptStoreError`s into HTTP statuses and OpenAI's error envelope
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gptstore.errors import (
    Conflict,
    GptStoreError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    StorageError,
    Unavailable,
)

STATUS = [
    (PayloadTooLarge, 413),
    (NotFound, 404),
    (InvalidRequest, 400),
    (Conflict, 409),
    (PermissionDenied, 403),
    (Unavailable, 503),
    (StorageError, 500),
]


def status_of(exc: GptStoreError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def envelope(message: str, type_: str, param: str | None = None,
             code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GptStoreError)
    async def _store_error(_request: Request, exc: GptStoreError) -> JSONResponse:
        status = status_of(exc)
        # Retry-After is whole seconds (RFC 9110)
        retry = max(1, math.ceil(float(getattr(exc, "retry_after", None) or 1)))
        headers = {"Retry-After": str(retry)} if status in (429, 503) else None
        code = "model_not_found" if isinstance(exc, NotFound) and exc.param == "model" else None
        return JSONResponse(envelope(exc.message, exc.type, exc.param, code), status_code=status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(
            first.get("msg", "invalid request"))
        return JSONResponse(envelope(message, "invalid_request_error", param), status_code=400)
