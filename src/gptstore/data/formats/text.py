"""Plain text: a `.txt` file, or JSON Lines `{"text": str}`; language-model loss on everything.

A `.txt` file is one document (a book, a code base dump, tinyshakespeare); each JSON
line is one document. A document is tokenised with the tokenizer's special tokens plus
a trained eos at its end, then cut into consecutive, non-overlapping chunks of
`max_length` tokens: a long document becomes several examples, nothing is thrown away
and nothing is "truncated". Documents are not packed together (a short document is a
short example; batching pads). A last chunk of a single token is dropped: it has no
next token to predict. Each chunk remembers the file line where it starts.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptstore.data.formats.base import (
    JSONL_SUFFIXES,
    DataFormat,
    EncodeResult,
    Issue,
    Record,
    TextRecord,
    eos_ids,
    first_json_object,
    read_jsonl,
    read_text,
    require_str,
)
from gptstore.data.types import EncodedExample


class TextFormat(DataFormat):
    name = "text"
    task = "causal-lm"
    description = 'a .txt file or JSONL {"text": str}; loss on every token, chunked'
    suffixes = (".txt",)

    def sniff(self, first: dict[str, Any]) -> bool:
        return "text" in first

    def parse(self, path: Path) -> tuple[list[Record], list[Issue]]:
        if is_raw_text(path):
            text, issues = read_text(path)
            return ([TextRecord(1, text, raw=True)] if text is not None else []), issues
        rows, issues = read_jsonl(path)
        records: list[Record] = []
        for line, obj in rows:
            text = require_str(obj, "text", line, issues)
            if text is not None:
                records.append(TextRecord(line, text))
        return records, issues

    def encode(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        max_length: int,
        *,
        label_names: Sequence[str] | None = None,
    ) -> EncodeResult:
        docs = [r for r in records if isinstance(r, TextRecord)]
        with_offsets = bool(getattr(tokenizer, "is_fast", False))
        encoded = tokenizer([r.text for r in docs], add_special_tokens=True,
                            return_offsets_mapping=with_offsets) if docs else {}
        eos = eos_ids(tokenizer)
        result = EncodeResult()
        for n, record in enumerate(docs):
            ids = list(encoded["input_ids"][n]) + eos
            offsets = list(encoded["offset_mapping"][n]) if with_offsets else []
            newlines = _newline_positions(record.text) if record.raw else []
            for start in range(0, len(ids), max_length):
                chunk = ids[start:start + max_length]
                if len(chunk) < 2 and start > 0:
                    break
                line = record.line
                if newlines and offsets:  # the file line of the chunk's first character
                    at = offsets[start][0] if start < len(offsets) else len(record.text)
                    line += bisect_left(newlines, at)
                result.examples.append(EncodedExample(input_ids=chunk, labels=list(chunk),
                                                      line=line))
        return result


def is_raw_text(path: Path) -> bool:
    """A `.txt` file, or a file of another extension that holds no JSON object."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return False
    return suffix == ".txt" or first_json_object(path) is None


def _newline_positions(text: str) -> list[int]:
    return [i for i, ch in enumerate(text) if ch == "\n"]
