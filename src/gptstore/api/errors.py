"""One place that turns `GptStoreError`s into HTTP statuses and OpenAI's error envelope
`{"error": {"message", "type", "param", "code"}}` (`ErrorResponse`, which routes also
name in their OpenAPI `responses`)."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptstore.errors import (
    Conflict,
    ContextLengthExceeded,
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
    if isinstance(exc, ContextLengthExceeded):
        return "context_length_exceeded"
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
        if exc.status_code == 404 and _browser_page(request):
            # a mistyped page address in a browser: the store front's shell, which draws
            # its "no page here" view, not the API's JSON
            from gptstore.web.pages import shell

            return HTMLResponse(shell(), status_code=404)
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
        param, detail = _first_problem(exc.errors())
        message = f"{param}: {detail}" if param else detail
        return JSONResponse(envelope(message, "invalid_request_error", param), status_code=400)


#: paths of the API and the server's own files: their 404 is always the JSON envelope
_API_PREFIXES = ("/v1/", "/api/", "/static/", "/docs", "/redoc", "/openapi.json", "/healthz")


def _browser_page(request: Request) -> bool:
    """Whether `request` is a browser asking for a page (not the API, not a file)."""
    return request.method == "GET" and not request.url.path.startswith(_API_PREFIXES) \
        and "text/html" in request.headers.get("accept", "")


#: what pydantic puts in an error's location for the member of a union it tried (`str`,
#: `list[str]`, `literal['auto']`, `function-after[...]`, a model's class name): not a
#: field of the request, so not part of the `param` a client is told
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|bytes)$|[\[\]-]|^[A-Z]")
_MEMBER_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list,
                 "dict": dict}


def _first_problem(errors: Sequence[Any]) -> tuple[str | None, str]:
    """The `param` (dotted field path) and the message of a request's first validation
    error. A value that fits none of a union's members gets one error per member, at the
    union's path plus the member's name (and deeper); the member of the value's own type
    (a list for a list) says what is wrong, else every member's message is given."""
    if not errors:
        return None, "invalid request"

    def parts(error: Any) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
        """(path to the union, the member tried, path inside it); no union: (path, None,
        ())."""
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] in _LOCATIONS:
            loc = loc[1:]
        for i, part in enumerate(loc):
            if _UNION_MEMBER.search(part):
                inside = tuple(p for p in loc[i + 1:] if not _UNION_MEMBER.search(p))
                return tuple(loc[:i]), part, inside
        return tuple(loc), None, ()

    def kind(member: str | None) -> type | None:
        return _MEMBER_TYPES.get(member.split("[", 1)[0]) if member else None

    root, member, _ = parts(errors[0])
    chosen: list[Any] = [errors[0]]
    if member is not None:
        union = [e for e in errors if parts(e)[0] == root and parts(e)[1] is not None]
        # the value itself is the input of an error about the member as a whole
        value_types = {type(e.get("input")) for e in union if not parts(e)[2]}
        chosen = [e for e in union if kind(parts(e)[1]) in value_types] or \
            [e for e in union if not parts(e)[2]] or union[:1]
    inside = parts(chosen[0])[2]
    chosen = [e for e in chosen if parts(e)[2] == inside]  # one field's problems
    path = parts(chosen[0])[0] + inside
    detail = "; or ".join(dict.fromkeys(str(e.get("msg", "invalid value")) for e in chosen))
    return ".".join(path) or None, detail
