"""`/openapi.json` documents every store route: a real response schema (not `{}`), the
error envelope, and the listing's parameters with their bounds."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

BINARY = "binary"  # a file's bytes
NO_CONTENT = "no content"  # 204

STORE_ROUTES = {
    ("/healthz", "get"): "Health",
    ("/api/engine", "get"): "EngineStats",
    ("/api/models", "get"): "ModelPage",
    ("/api/models/{namespace}/{name}", "get"): "ModelPublic",
    ("/api/models/{namespace}/{name}", "patch"): "ModelPublic",
    ("/api/models/{namespace}/{name}/versions/{number}", "get"): "VersionPublic",
    ("/api/models/{namespace}/{name}/card", "get"): None,  # markdown as text/plain
    ("/api/files/{file_id}/report", "get"): "FileReport",
    ("/api/suites", "get"): "SuiteList",
    ("/api/leaderboards/{suite}", "get"): "Leaderboard",
    # the store front's (api/store/front.py)
    ("/api/search", "get"): "ModelPage",
    ("/api/categories", "get"): "Categories",
    ("/api/models/{namespace}/{name}/reactions", "get"): "ReactionsPublic",
    ("/api/models/{namespace}/{name}/like", "put"): "ReactionsPublic",
    ("/api/models/{namespace}/{name}/rating", "put"): "ReactionsPublic",
    ("/api/models/{namespace}/{name}/card.html", "get"): "CardHtml",
    ("/api/models/{namespace}/{name}/versions/{number}/files/{path}", "get"): BINARY,
    ("/api/files/{file_id}/preview", "get"): "FilePreview",
    ("/api/me", "get"): "Me",
    # the web login and key management (api/store/session.py)
    ("/api/session", "post"): "KeyCreated",
    ("/api/session", "delete"): NO_CONTENT,
    ("/api/keys", "get"): "KeyList",
    ("/api/keys", "post"): "KeyCreated",
    ("/api/keys/{key_id}", "delete"): "KeyPublic",
}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_every_api_route_documents_its_response(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops
                  if path.startswith("/api") or path == "/healthz"}
    assert documented == set(STORE_ROUTES)
    for (path, method), name in STORE_ROUTES.items():
        responses = spec["paths"][path][method]["responses"]
        success = next(code for code in responses if code.startswith("2"))
        if success == "204":  # no content: nothing to document but the status
            assert name == NO_CONTENT and "content" not in responses["204"], path
            continue
        ok = responses[success]["content"]
        if name is None:
            assert ok == {"text/plain": {"schema": {"type": "string"}}}
            continue
        if name == BINARY:
            assert ok == {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}
            continue
        schema = ok["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{name}"}, path
        properties = _resolve(spec, schema)["properties"]
        assert properties, f"{path}: empty response schema"


def test_the_listing_documents_page_and_fields(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    page = spec["components"]["schemas"]["ModelPage"]
    assert set(page["properties"]) == {"data", "next_cursor", "has_more"}
    summary = spec["components"]["schemas"]["ModelSummary"]
    assert set(summary["properties"]) == {
        "name", "namespace", "task", "description", "tags", "license", "visibility",
        "created_at", "updated_at", "downloads", "likes", "requests", "rating",
        "rating_count", "latest"}
    latest = spec["components"]["schemas"]["VersionSummary"]
    assert set(latest["properties"]) == {"number", "kind", "base", "size", "metrics"}
    operation = spec["paths"]["/api/models"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert set(params) == {"limit", "cursor", "task", "q", "sort"}
    assert params["limit"] == {"type": "integer", "maximum": 200, "minimum": 1,
                               "default": 50, "title": "Limit",
                               "description": "Models per page."}
    assert params["sort"]["enum"] == ["name", "updated", "downloads", "likes"]
    assert params["sort"]["default"] == "name"


def test_errors_are_documented_as_the_envelope(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, statuses in [("/api/models", ("400",)),
                           ("/api/models/{namespace}/{name}", ("400", "404")),
                           ("/api/models/{namespace}/{name}/versions/{number}", ("400", "404")),
                           ("/api/models/{namespace}/{name}/card", ("400", "404"))]:
        responses = spec["paths"][path]["get"]["responses"]
        for status in statuses:
            assert responses[status]["content"]["application/json"]["schema"] == envelope
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"message", "type", "param", "code"}


def test_no_route_documents_a_422(client: TestClient) -> None:
    """Validation errors are answered as 400 with the envelope (api/errors.py)."""
    spec = client.get("/openapi.json").json()
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], (method, path)
    assert spec["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]["content"] == (
        envelope)
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    response = client.get("/api/models", params={"limit": "x"})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
