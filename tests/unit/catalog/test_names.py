from __future__ import annotations

import pytest

from gptstore.catalog.names import ModelRef, parse_ref
from gptstore.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", ModelRef("HuggingFaceTB", "SmolLM2-135M-Instruct")),
        ("me/model.v2_x@3", ModelRef("me", "model.v2_x", 3)),
        ("me/m@latest", ModelRef("me", "m", None)),
        ("a/" + "b" * 96, ModelRef("a", "b" * 96)),
    ],
)
def test_valid_names(text: str, ref: ModelRef) -> None:
    assert parse_ref(text) == ref


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../x", "invalid namespace"),
        ("a/..", "invalid name"),
        ("a/b c", "invalid name"),
        ("a b/c", "invalid namespace"),
        ("noslash", "not 'namespace/name'"),
        ("a/b/c", "not 'namespace/name'"),
        ("/b", "namespace is empty"),
        ("a/", "name is empty"),
        ("a/" + "b" * 97, "97 characters"),
        ("a/b@0", "positive integer"),
        ("a/b@v1", "positive integer"),
        ("a/-b", "invalid name"),
        ("a/b..c", "invalid name"),
    ],
)
def test_invalid_names_say_why(text: str, hint: str) -> None:
    with pytest.raises(InvalidRequest, match="model name") as info:
        parse_ref(text)
    assert hint in info.value.message
    assert info.value.param == "model"


def test_version_not_allowed_where_a_model_is_created() -> None:
    with pytest.raises(InvalidRequest, match="must not carry a version"):
        parse_ref("a/b@2", allow_version=False)
