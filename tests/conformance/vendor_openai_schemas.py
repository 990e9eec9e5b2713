"""Regenerate `openai_schemas.json`: a subset of OpenAI's published OpenAPI document.

Run by hand, never by the tests (a clone has no copy of OpenAI's 3.4 MB document):

    python tests/conformance/vendor_openai_schemas.py PATH/TO/openapi.json --commit f85dbe2

PATH/TO/openapi.json comes from https://github.com/openai/openai-openapi (MIT licence,
copied beside the subset as `LICENSE-openai-openapi`). The subset is `components/schemas`
restricted to `ROOTS` and every schema they reach through `$ref`, each copied unchanged,
so the `#/components/schemas/...` references resolve inside the subset exactly as in the
whole document. To check a new route, add the name of its response schema to `ROOTS`
and run this again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("openai_schemas.json")
PREFIX = "#/components/schemas/"

# The response bodies gptstore's /v1 routes answer with, now and next.
ROOTS = [
    # /v1/models
    "ListModelsResponse",
    "Model",
    "DeleteModelResponse",
    # /v1/chat/completions, /v1/completions
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    # every error
    "ErrorResponse",
    # /v1/files (jobs service)
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    # /v1/fine_tuning/jobs (jobs service)
    "FineTuningJob",
    "ListPaginatedFineTuningJobsResponse",
    "FineTuningJobEvent",
    "ListFineTuningJobEventsResponse",
    "FineTuningJobCheckpoint",
    "ListFineTuningJobCheckpointsResponse",
]


def refs_in(node: Any) -> set[str]:
    """Every `$ref` value anywhere under `node`."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= refs_in(value)
        return found
    if isinstance(node, list):
        return set().union(*(refs_in(item) for item in node)) if node else set()
    return set()


def closure(schemas: dict[str, Any], roots: list[str]) -> dict[str, Any]:
    """`roots` and every component schema they reach, in name order."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in schemas:
            raise SystemExit(f"{name}: no such schema in components/schemas")
        seen.add(name)
        for ref in refs_in(schemas[name]):
            if not ref.startswith(PREFIX):
                raise SystemExit(f"{name}: cannot vendor the outside reference {ref}")
            todo.append(ref.removeprefix(PREFIX))
    return {name: schemas[name] for name in sorted(seen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("openapi", type=Path, help="OpenAI's openapi.json")
    parser.add_argument("--commit", required=True,
                        help="the openai/openai-openapi commit the file comes from")
    args = parser.parse_args()
    document = json.loads(args.openapi.read_text())
    subset = {
        "openapi": document["openapi"],
        "info": document["info"],
        "x-vendored": {
            "source": "https://github.com/openai/openai-openapi",
            "commit": args.commit,
            "file": "openapi.json",
            "licence": "MIT, see LICENSE-openai-openapi beside this file",
            "content": "components/schemas: the roots and every schema they $ref, unchanged",
            "roots": ROOTS,
        },
        "components": {"schemas": closure(document["components"]["schemas"], ROOTS)},
    }
    OUT.write_text(json.dumps(subset, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(subset['components']['schemas'])} schemas")


if __name__ == "__main__":
    main()
