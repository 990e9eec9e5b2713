"""Model names: `namespace/name`, optionally `@VERSION`.

Both parts use letters, digits, `.`, `_` and `-`, start with a letter or digit and are
at most 96 characters (the Hugging Face Hub's repo-name limit). A version is a positive
integer or `latest`. Anything else is an `InvalidRequest` naming what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gptstore.errors import InvalidRequest

MAX_PART = 96
_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HELP = (
    "names look like 'namespace/name' (optionally '@VERSION'), each part made of "
    "letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
    f"{MAX_PART} characters"
)


@dataclass(frozen=True)
class ModelRef:
    namespace: str
    name: str
    version: int | None = None  # None: the latest version

    @property
    def full_name(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return self.full_name if self.version is None else f"{self.full_name}@{self.version}"


def _check_part(part: str, what: str, original: str) -> None:
    if not part:
        raise InvalidRequest(f"model name {original!r}: the {what} is empty; {_HELP}")
    if len(part) > MAX_PART:
        raise InvalidRequest(
            f"model name {original!r}: the {what} has {len(part)} characters; {_HELP}"
        )
    if part in {".", ".."} or ".." in part or not _PART_RE.match(part):
        raise InvalidRequest(f"model name {original!r}: invalid {what} {part!r}; {_HELP}")


def parse_ref(text: str, *, allow_version: bool = True) -> ModelRef:
    """Parse `namespace/name[@VERSION]`; raises InvalidRequest with the fix."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"model name is empty; {_HELP}", param="model")
    original = text
    version: int | None = None
    if "@" in text:
        if not allow_version:
            raise InvalidRequest(
                f"model name {original!r} must not carry a version here; drop the '@...'",
                param="model",
            )
        text, _, tag = text.partition("@")
        if tag != "latest":
            if not tag.isdigit() or int(tag) < 1:
                raise InvalidRequest(
                    f"model name {original!r}: version {tag!r} must be a positive integer "
                    "or 'latest'",
                    param="model",
                )
            version = int(tag)
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidRequest(f"model name {original!r} is not 'namespace/name'; {_HELP}",
                             param="model")
    try:
        _check_part(parts[0], "namespace", original)
        _check_part(parts[1], "name", original)
    except InvalidRequest as exc:
        exc.param = "model"
        raise
    return ModelRef(parts[0], parts[1], version)
