"""The shape every training-file format shares, and the helpers they use.

Owns: `Issue` (one validation finding with its line and rule id), the record types a
format parses a file into, the `DataFormat` interface (name, sniffing, parsing,
dataset-level checks, encoding), `EncodeResult`, and the small readers and field
checks the formats have in common (UTF-8 decoding, JSON Lines, required keys).

Does not know: which formats exist (the registry in `formats/__init__.py`), files as a
whole (`data/encode.py`), reports or the CLI. Tokenizers appear only as an opaque
object with the Hugging Face call signature; torch is never imported here.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from gptstore.data.types import EncodedExample, TaskName

Severity = Literal["error", "warning"]

#: extensions read as JSON Lines
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


# --------------------------------------------------------------------------- issues


@dataclass(frozen=True)
class Issue:
    """One finding about a training file: an error (training refuses) or a warning.

    `line` is the 1-based line (CSV: the row's first line) or None when the finding is
    about the whole file; `rule` is a short stable id (`invalid_json`, `no_assistant`,
    ...) that clients may switch on; `message` says what is wrong and how to fix it.
    """

    rule: str
    message: str
    line: int | None = None
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: [{self.rule}] {self.message}"


def error(rule: str, message: str, line: int | None = None) -> Issue:
    return Issue(rule, message, line, "error")


def warning(rule: str, message: str, line: int | None = None) -> Issue:
    return Issue(rule, message, line, "warning")


# -------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Message:
    """One chat turn. `weight` is OpenAI's optional 0/1 on assistant turns (None = 1)."""

    role: str
    content: str
    weight: int | None = None

    @property
    def trained(self) -> bool:
        return self.role == "assistant" and self.weight != 0


@dataclass(frozen=True)
class ChatRecord:
    line: int
    messages: tuple[Message, ...]

    def key(self) -> str:
        return json.dumps([(m.role, m.content, m.weight) for m in self.messages])


@dataclass(frozen=True)
class PromptCompletionRecord:
    line: int
    prompt: str
    completion: str

    def key(self) -> str:
        return json.dumps([self.prompt, self.completion])


@dataclass(frozen=True)
class TextRecord:
    line: int
    text: str
    #: True when `text` is the raw file from `line` on (a .txt), so a newline in it is
    #: a new line of the file; False for a JSON string
    raw: bool = False

    def key(self) -> str:
        return self.text


@dataclass(frozen=True)
class ClassificationRecord:
    """A text and its label, the label normalised to a string (1 and "1" are one class)."""

    line: int
    text: str
    label: str

    def key(self) -> str:
        return json.dumps([self.text, self.label])


Record = ChatRecord | PromptCompletionRecord | TextRecord | ClassificationRecord


# ------------------------------------------------------------------------- encoding


@dataclass
class EncodeResult:
    """What a format's `encode` returns: examples plus what happened on the way."""

    examples: list[EncodedExample] = field(default_factory=list)
    #: (line, full token count) of every example cut at max_length
    truncated: list[tuple[int, int]] = field(default_factory=list)
    #: errors (e.g. a chat template that rejects a conversation) and warnings
    issues: list[Issue] = field(default_factory=list)
    label_names: list[str] | None = None


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, add_special_tokens: bool
) -> list[list[int]]:
    """Token ids of many texts in one tokenizer call (fast tokenizers batch in Rust)."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)
    return [list(ids) for ids in encoded["input_ids"]]


def bos_prefix(tokenizer: Any) -> list[int]:
    """`[bos_token_id]` when the tokenizer itself adds a BOS to a text (Llama), else `[]`."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = list(tokenizer("", add_special_tokens=True)["input_ids"])
    return ids[:1] if bos is not None and ids[:1] == [bos] else []


def eos_ids(tokenizer: Any) -> list[int]:
    """`[eos_token_id]`, or `[]` for a tokenizer without an end-of-sequence token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if eos is not None else []


# --------------------------------------------------------------------------- format


class DataFormat(ABC):
    """One training-file format: how to recognise it, parse it, check it, encode it."""

    #: registry name, the value of `--format`
    name: ClassVar[str]
    #: the task this format trains
    task: ClassVar[TaskName]
    #: one line for `--help` and docs
    description: ClassVar[str]
    #: file extensions that alone pick this format (e.g. `.txt`, `.csv`)
    suffixes: ClassVar[tuple[str, ...]] = ()

    def sniff(self, first: dict[str, Any]) -> bool:
        """Whether the first JSON object of a JSON Lines file looks like this format."""
        return False

    @abstractmethod
    def parse(self, path: Path) -> tuple[list[Record], list[Issue]]:
        """Read the file: the valid records and every problem found, line by line."""

    def check(
        self, records: Sequence[Record], *, label_names: Sequence[str] | None = None
    ) -> list[Issue]:
        """Checks over the whole data set (e.g. classification needs two classes)."""
        return []

    @abstractmethod
    def encode(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        max_length: int,
        *,
        label_names: Sequence[str] | None = None,
    ) -> EncodeResult:
        """Tokenise valid records into `EncodedExample`s (labels unshifted)."""


# -------------------------------------------------------------------------- readers


def read_text(path: Path) -> tuple[str | None, list[Issue]]:
    """The file decoded as UTF-8 (a BOM is accepted), or None and a `not_utf8` error."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [error("not_utf8", "the file is not UTF-8 text (byte "
                            f"{exc.start}); save it as UTF-8", line)]
    if not text.strip():
        return None, [error("empty_file", "the file is empty; add training examples")]
    return text, []


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[Issue]]:
    """(line, object) for every JSON object line; blank lines are skipped."""
    text, issues = read_text(path)
    if text is None:
        return [], issues
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            issues.append(error("invalid_json", f"not valid JSON ({exc.msg} at column "
                                f"{exc.colno}); write one JSON object per line", number))
            continue
        if not isinstance(obj, dict):
            issues.append(error("not_object", f"expected a JSON object, got "
                                f"{json_type(obj)}; write one {{...}} object per line",
                                number))
            continue
        rows.append((number, obj))
    return rows, issues


def first_json_object(path: Path, max_lines: int = 1000) -> dict[str, Any] | None:
    """The first line of the file that parses as a JSON object (for format sniffing)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            for number, raw in enumerate(handle):
                if number >= max_lines:
                    break
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    return obj
    except OSError:
        return None
    return None


def json_type(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def require_str(
    obj: dict[str, Any],
    key: str,
    line: int,
    issues: list[Issue],
    *,
    where: str = "",
    empty_rule: str | None = "empty_text",
) -> str | None:
    """`obj[key]` when it is a string (non-blank unless `empty_rule` is None), else an
    error appended to `issues` and None."""
    label = f"{where}{key!r}"
    if key not in obj:
        issues.append(error("missing_key", f"missing key {label}; add it", line))
        return None
    value = obj[key]
    if not isinstance(value, str):
        issues.append(error("wrong_type", f"{label} must be a string, got "
                            f"{json_type(value)}", line))
        return None
    if empty_rule is not None and not value.strip():
        issues.append(error(empty_rule, f"{label} is empty; give it text or remove the "
                            "example", line))
        return None
    return value


def truncate(ids: list[int], max_length: int) -> list[int]:
    """Keep the first `max_length` tokens (the start of an example carries its prompt)."""
    return ids[:max_length]
