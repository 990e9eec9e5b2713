"""Validate JSON documents against the component schemas of OpenAI's OpenAPI document.

Owns: loading the vendored subset of OpenAI's `openapi.json` (`openai_schemas.json`
beside this file, MIT licence in `LICENSE-openai-openapi`; regenerate it with
`vendor_openai_schemas.py`), a JSON Schema Draft 2020-12 validator (OpenAPI 3.1 schemas
are 2020-12) for any named schema under `components/schemas` with every `$ref` resolved
inside that document through `referencing` (nothing is fetched), an assertion that lists
each violation by its JSON path, and the short, named list of places where OpenAI's
document is stricter than OpenAI's own API (`Relaxation`).

Knows nothing of gptstore, HTTP or SSE: the caller hands it parsed JSON.

`format` keywords (`unixtime`, `date`, `uri`) are annotations only, as Draft 2020-12
says by default; OpenAPI's own keywords (`nullable`, `discriminator`, `x-*`) mean nothing
to JSON Schema and are ignored, which is where the relaxations below come from.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

VENDORED = Path(__file__).with_name("openai_schemas.json")
# The base URI the document is registered under, so that `#/components/schemas/X`
# references resolve inside it. Only a name: the registry has no way to fetch anything.
DOCUMENT_URI = "https://github.com/openai/openai-openapi/openapi.json"
SCHEMAS = "/components/schemas/"


@dataclass(frozen=True)
class Relaxation:
    """Accept `null` at one place of one component schema, because OpenAI's live API sends
    it there although the document does not allow it.

    `pointer` is a JSON pointer inside the component schema `schema`; the subschema found
    there becomes `anyOf: [<it>, {"type": "null"}]`, and nothing else changes. A relaxation
    whose place is gone from the document, or that the document already accepts, raises
    at once: the exception cannot outlive its reason.
    """

    name: str
    schema: str
    pointer: str
    why: str


# -- the places where OpenAI's document is stricter than OpenAI's API ----------------
#
# Our notes on the reference copy of the document, measured against OpenAI's live API:
#   "In a few places the document is stricter than the live API (stream chunks carry
#   "finish_reason": null, "logprobs": null and "usage": null, which OpenAI itself
#   sends): note such places in the test rather than bending the response."
#
# Why the document is stricter there: in CreateChatCompletionStreamResponse these three
# places, and `logprobs.refusal` (null when nothing was refused, as in the non-streaming
# reply), carry `"nullable": true`, an OpenAPI 3.0 keyword that OpenAPI 3.1 (JSON Schema
# 2020-12) dropped, so a validator ignores it; the rest of the document spells a null as
# `anyOf: [..., {"type": "null"}]`. The schema's own example chunk reads
# `"logprobs":null,"finish_reason":null`, and the `usage` description says "When present,
# it contains a null value except for the last chunk".

CHAT_CHUNK_FINISH_REASON = Relaxation(
    name="chat stream chunk: finish_reason null before the last chunk of a choice",
    schema="CreateChatCompletionStreamResponse",
    pointer="/properties/choices/items/properties/finish_reason",
    why='marked "nullable": true (OpenAPI 3.0); required, and OpenAI sends null',
)
CHAT_CHUNK_LOGPROBS = Relaxation(
    name="chat stream chunk: logprobs null when none were asked for",
    schema="CreateChatCompletionStreamResponse",
    pointer="/properties/choices/items/properties/logprobs",
    why='marked "nullable": true (OpenAPI 3.0); OpenAI sends null',
)
CHAT_CHUNK_LOGPROBS_REFUSAL = Relaxation(
    name="chat stream chunk: logprobs.refusal null when nothing was refused",
    schema="CreateChatCompletionStreamResponse",
    pointer="/properties/choices/items/properties/logprobs/properties/refusal",
    why='marked "nullable": true (OpenAPI 3.0); required, and the non-streaming '
        "reply's logprobs allow null at the same place (anyOf [array, null])",
)
CHAT_CHUNK_USAGE = Relaxation(
    name="chat stream chunk: usage null on every chunk but the usage chunk",
    schema="CreateChatCompletionStreamResponse",
    pointer="/properties/usage",
    why='marked "nullable": true (OpenAPI 3.0); "it contains a null value except for '
        'the last chunk"',
)
# Legacy completions share one schema between the response and its stream chunks
# ("both the streamed and non-streamed response objects share the same shape"), where
# `finish_reason` is a required string: but a chunk before the end has no reason yet.
# The document's own streaming example for POST /completions reads
# `"logprobs": null, "finish_reason": null`.
COMPLETION_CHUNK_FINISH_REASON = Relaxation(
    name="completion stream chunk: finish_reason null before the last chunk of a choice",
    schema="CreateCompletionResponse",
    pointer="/properties/choices/items/properties/finish_reason",
    why="required string in the shared schema; the document's own stream example sends "
        "null",
)

# With `echo`, the prompt's first token has no context to be scored in: OpenAI's API
# sent null for its logprob and its alternatives (a text-davinci-003 reply quoted in
# vllm-project/vllm#1504; stanford-crfm/helm#54, "The first log probability and top
# choices are None"), which vLLM and lm-evaluation-harness follow (the harness slices
# token_logprobs[ctxlen:-1], past it). The document's arrays take numbers and objects.
_ECHO_LOGPROBS = "/properties/choices/items/properties/logprobs/anyOf/0/properties"
COMPLETION_ECHO_FIRST_LOGPROB = Relaxation(
    name="completion with echo: the prompt's first token has a null logprob",
    schema="CreateCompletionResponse",
    pointer=f"{_ECHO_LOGPROBS}/token_logprobs/items",
    why="the first prompt token has no context; OpenAI sent null there",
)
COMPLETION_ECHO_FIRST_TOP = Relaxation(
    name="completion with echo: the prompt's first token has null top_logprobs",
    schema="CreateCompletionResponse",
    pointer=f"{_ECHO_LOGPROBS}/top_logprobs/items",
    why="the first prompt token has no context; OpenAI sent null there",
)

CHAT_STREAM = (CHAT_CHUNK_FINISH_REASON, CHAT_CHUNK_LOGPROBS, CHAT_CHUNK_LOGPROBS_REFUSAL,
               CHAT_CHUNK_USAGE)
COMPLETION_STREAM = (COMPLETION_CHUNK_FINISH_REASON,)
COMPLETION_ECHO = (COMPLETION_ECHO_FIRST_LOGPROB, COMPLETION_ECHO_FIRST_TOP)


# -- the document ------------------------------------------------------------------


@cache
def document() -> dict[str, Any]:
    """The vendored subset of OpenAI's OpenAPI document, as vendored (do not modify it)."""
    return dict(json.loads(VENDORED.read_text()))


def schema_names() -> list[str]:
    return sorted(document()["components"]["schemas"])


@cache
def schema_document() -> dict[str, Any]:
    """The document the validators read: `document()` with OpenAPI 3.0's boolean
    `exclusiveMinimum` / `exclusiveMaximum` written as JSON Schema 2020-12 numbers.

    The fine-tuning hyperparameters (`learning_rate_multiplier`, `beta`,
    `compute_multiplier`) still say `"minimum": 0, "exclusiveMinimum": true`, the 3.0 way
    of saying "> 0". In 2020-12 that is an invalid schema, and a validator compares the
    number with `True` (== 1): OpenAI's own FineTuningJob example, with a multiplier of
    1.0, fails "1.0 is less than or equal to the minimum of True". Rewritten as
    `"exclusiveMinimum": 0` it means what its author wrote, no looser and no stricter.
    (Unlike `nullable`, above, which 2020-12 merely ignores, this would check nonsense.)
    """
    doc = copy.deepcopy(document())
    _numeric_exclusive_bounds(doc)
    return doc


def _numeric_exclusive_bounds(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _numeric_exclusive_bounds(item)
        return
    if not isinstance(node, dict):
        return
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"),
                                 ("exclusiveMaximum", "maximum")):
        flag = node.get(exclusive)
        if isinstance(flag, bool):
            del node[exclusive]
            if flag:  # {"minimum": m, "exclusiveMinimum": true} -> {"exclusiveMinimum": m}
                node[exclusive] = node.pop(inclusive)
    for value in node.values():
        _numeric_exclusive_bounds(value)


def _registry(doc: dict[str, Any]) -> Registry:
    return Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(doc))


def _ref(schema: str, pointer: str = "") -> dict[str, str]:
    return {"$ref": f"{DOCUMENT_URI}#{SCHEMAS}{schema}{pointer}"}


def _relaxed(relaxations: Iterable[Relaxation]) -> dict[str, Any]:
    """A copy of the schema document with each relaxation applied (checked first)."""
    original = schema_document()
    doc = copy.deepcopy(original)
    # find every place before changing any: one may lie inside another
    places = [(relax, *_parent(doc["components"]["schemas"], relax)) for relax in relaxations]
    for relax, parent, key in places:
        strict = Draft202012Validator(_ref(relax.schema, relax.pointer),
                                      registry=_registry(original))
        if strict.is_valid(None):
            raise ValueError(f"relaxation {relax.name!r} is not needed any more: "
                             f"{relax.schema}{relax.pointer} accepts null; remove it")
        parent[key] = {"anyOf": [parent[key], {"type": "null"}]}
    return doc


def _parent(schemas: dict[str, Any], relax: Relaxation) -> tuple[dict[str, Any], str]:
    if relax.schema not in schemas:
        raise ValueError(f"relaxation {relax.name!r}: no schema {relax.schema}")
    node: Any = schemas[relax.schema]
    *steps, last = relax.pointer.lstrip("/").split("/")
    for step in steps:  # object keys, and list indices (anyOf/0)
        if isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            node = node.get(step) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        raise ValueError(f"relaxation {relax.name!r}: {relax.schema}{relax.pointer} is not "
                         "in the document any more; check whether the exception still holds")
    return node, last


@cache
def validator(schema: str, relaxations: tuple[Relaxation, ...] = ()) -> Draft202012Validator:
    """A Draft 2020-12 validator of the component schema `schema`."""
    if schema not in document()["components"]["schemas"]:
        raise KeyError(f"{schema} is not among the vendored schemas; add it to ROOTS in "
                       "vendor_openai_schemas.py and regenerate openai_schemas.json")
    doc = _relaxed(relaxations) if relaxations else schema_document()
    return Draft202012Validator(_ref(schema), registry=_registry(doc))


# -- checking ----------------------------------------------------------------------


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: ValidationError, depth: int = 0) -> list[str]:
    """`$.json.path: message`, then the reasons of each anyOf/oneOf branch, indented."""
    lines = [f"{'    ' * depth}{error.json_path}: {_short(error.message)}"]
    for sub in sorted(error.context or [], key=lambda e: (list(map(str, e.absolute_path)),
                                                          e.message)):
        if sub.validator == "type" and sub.validator_value == "null":
            continue  # "... is not of type 'null'": the null branch says nothing useful
        lines += _describe(sub, depth + 1)
    return lines


def violations(instance: Any, schema: str,
               relaxations: tuple[Relaxation, ...] = ()) -> list[str]:
    """Every violation of `schema` by `instance`, in document order, one (possibly
    multi-line) text each."""
    errors = sorted(validator(schema, relaxations).iter_errors(instance),
                    key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return ["\n  ".join(_describe(error)) for error in errors]


def assert_conforms(instance: Any, schema: str, *,
                    relaxations: tuple[Relaxation, ...] = (), what: str = "") -> None:
    """Fail, listing each violation by JSON path, unless `instance` is a valid `schema`."""
    problems = violations(instance, schema, relaxations)
    if problems:
        shown = _short(json.dumps(instance), 2000)
        raise AssertionError(
            f"{what or 'the document'} does not conform to OpenAI's {schema} "
            f"({len(problems)} violations):\n  " + "\n  ".join(problems)
            + f"\ndocument: {shown}")
