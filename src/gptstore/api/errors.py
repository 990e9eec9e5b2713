"""One place that turns `GptStoreError`s into HTTP statuses and OpenAI's error envelope
`{"error": {"message", "type", "param", "code"}}` (`ErrorResponse`, which routes also
name in their OpenAPI `responses`)."""

from __future__ import annotations

import copy
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptstore.errors import (
    Conflict,
    GptStoreError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    StorageError,
    Unauthenticated,
    Unavailable,
)

STATUS = [
    (PayloadTooLarge, 413),
    (NotFound, 404),
    (InvalidRequest, 400),
    (Conflict, 409),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (RateLimited, 429),
    (Unavailable, 503),
    (StorageError, 500),
]


def status_of(exc: GptStoreError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


#: where FastAPI says a request field came from; the envelope's `param` names the field
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorDetail


def envelope(message: str, type_: str, param: str | None = None,
             code: str | None = None) -> dict[str, object]:
    return ErrorResponse(
        error=ErrorDetail(message=message, type=type_, param=param, code=code)
    ).model_dump()


def _document_errors(app: FastAPI) -> None:
    """Make `/openapi.json` say what the handlers below do. FastAPI documents validation
    errors as `422 HTTPValidationError` and a route's error models in the route's own
    media type (text/plain for a card); ours are 400, and every error is the JSON
    envelope."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI's, cached on app.openapi_schema: edited in place
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        envelope = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(envelope.pop("$defs", {}))
        schemas["ErrorResponse"] = envelope
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault(
                        "400", {"description": "A parameter is invalid; `param` names it."})
                for status, response in responses.items():
                    if status.startswith(("4", "5")):
                        response["content"] = copy.deepcopy(content)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _code(exc: GptStoreError) -> str | None:
    """OpenAI's `code` for the errors its clients branch on."""
    if isinstance(exc, NotFound) and exc.param == "model":
        return "model_not_found"
    if isinstance(exc, Unauthenticated):
        return "invalid_api_key"
    if isinstance(exc, RateLimited):
        return "rate_limit_exceeded"
    return None


def error_response(exc: GptStoreError) -> JSONResponse:
    """The response for `exc`: its status, OpenAI's envelope, and the headers the status
    asks for (Retry-After on 429 and 503, WWW-Authenticate on 401)."""
    status = status_of(exc)
    # Retry-After is whole seconds (RFC 9110)
    retry = max(1, math.ceil(float(getattr(exc, "retry_after", None) or 1)))
    headers = {"Retry-After": str(retry)} if status in (429, 503) else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="gptstore"'}
    return JSONResponse(envelope(exc.message, exc.type, exc.param, _code(exc)),
                        status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    _document_errors(app)

    @app.exception_handler(GptStoreError)
    async def _store_error(_request: Request, exc: GptStoreError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own errors (an unrouted path, a method a route lacks) in the envelope
        if exc.status_code == 404:
            message = (f"no route {request.method} {request.url.path}: see /docs for the "
                       "API's routes")
            type_ = "not_found_error"
        elif exc.status_code == 405:
            message = f"{request.url.path} does not accept {request.method}; see /docs"
            type_ = "invalid_request_error"
        else:
            message, type_ = str(exc.detail), "invalid_request_error"
        return JSONResponse(envelope(message, type_), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # loc is ("body", the error's offset)
            at = first.get("loc", ("body", "?"))[-1]
            detail = (first.get("ctx") or {}).get("error", "")
            message = (f"the request body is not valid JSON (character {at}: {detail}); "
                       "send a JSON object").replace(": )", ")")
            return JSONResponse(envelope(message, "invalid_request_error"), status_code=400)
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in _LOCATIONS:
            loc = loc[1:]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(
            first.get("msg", "invalid request"))
        return JSONResponse(envelope(message, "invalid_request_error", param), status_code=400)
