"""Text classification: JSONL `{"text": str, "label": str|int}` or CSV/TSV with a header.

CSV/TSV need a `text` (or `sentence`, as in GLUE's SST-2) column and a `label` column,
matched case-insensitively; other columns are ignored. TSV is read without quoting
(GLUE files contain stray quotes), CSV with standard double-quote quoting.

Labels are normalised to strings, so `1` and `"1"` are one class. The label set is
sorted deterministically: numerically when every label is an integer ("2" before
"10"), otherwise by plain string order; index i of `label_names` is class id i. A
validation file is encoded with the training file's `label_names`, and a label the
training file does not have is an error. Bools, floats, lists, objects and null are not
labels. Text is truncated to `max_length` keeping its start.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptstore.data.formats.base import (
    ClassificationRecord,
    DataFormat,
    EncodeResult,
    Issue,
    Record,
    encode_texts,
    error,
    json_type,
    read_jsonl,
    read_text,
    require_str,
    warning,
)
from gptstore.data.types import EncodedExample

TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMN = "label"
_INT = re.compile(r"-?\d+")


class ClassificationFormat(DataFormat):
    name = "classification"
    task = "classification"
    description = 'JSONL {"text", "label"} or CSV/TSV with columns text (or sentence) and label'
    suffixes = (".csv", ".tsv")

    def sniff(self, first: dict[str, Any]) -> bool:
        return LABEL_COLUMN in first

    def parse(self, path: Path) -> tuple[list[Record], list[Issue]]:
        suffix = Path(path).suffix.lower()
        if suffix in (".csv", ".tsv"):
            return parse_delimited(path, "\t" if suffix == ".tsv" else ",")
        if suffix not in (".jsonl", ".json", ".ndjson") and looks_delimited(path):
            return parse_delimited(path, None)
        return parse_jsonl(path)

    def check(
        self, records: Sequence[Record], *, label_names: Sequence[str] | None = None
    ) -> list[Issue]:
        rows = [r for r in records if isinstance(r, ClassificationRecord)]
        issues: list[Issue] = []
        if label_names is None:
            labels = label_set(rows)
            if len(labels) == 1:
                issues.append(error("single_class", f"every example has the label "
                                    f"{labels[0]!r}: a classifier needs at least two "
                                    "classes; add examples of another class"))
        else:
            known = set(label_names)
            for r in rows:
                if r.label not in known:
                    issues.append(error("unseen_label", f"label {r.label!r} is not one of "
                                        f"the training labels {list(label_names)}; fix the "
                                        "label or add it to the training file", r.line))
        first_label: dict[str, tuple[int, str]] = {}
        for r in rows:
            seen = first_label.setdefault(r.text, (r.line, r.label))
            if seen[1] != r.label:
                issues.append(warning("conflicting_labels", f"the same text has label "
                                      f"{seen[1]!r} on line {seen[0]} and {r.label!r} here",
                                      r.line))
        return issues

    def encode(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        max_length: int,
        *,
        label_names: Sequence[str] | None = None,
    ) -> EncodeResult:
        rows = [r for r in records if isinstance(r, ClassificationRecord)]
        names = list(label_names) if label_names is not None else label_set(rows)
        index = {name: i for i, name in enumerate(names)}
        result = EncodeResult(label_names=names)
        for record, ids in zip(rows, encode_texts(tokenizer, [r.text for r in rows],
                                                  add_special_tokens=True), strict=True):
            if record.label not in index:
                continue  # reported by check() as unseen_label
            if len(ids) > max_length:
                result.truncated.append((record.line, len(ids)))
                ids = ids[:max_length]
            result.examples.append(EncodedExample(input_ids=ids, label=index[record.label],
                                                  line=record.line))
        return result


def label_set(records: Sequence[ClassificationRecord]) -> list[str]:
    """The sorted label names: numeric order if all are integers, else string order."""
    labels = {r.label for r in records}
    if labels and all(_INT.fullmatch(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


# ---------------------------------------------------------------------------- JSONL


def parse_jsonl(path: Path) -> tuple[list[Record], list[Issue]]:
    rows, issues = read_jsonl(path)
    records: list[Record] = []
    for line, obj in rows:
        before = len(issues)
        key = next((k for k in TEXT_COLUMNS if k in obj), "text")
        text = require_str(obj, key, line, issues)
        label = parse_label(obj, line, issues)
        if len(issues) == before and text is not None and label is not None:
            records.append(ClassificationRecord(line, text, label))
    return records, issues


def parse_label(obj: dict[str, Any], line: int, issues: list[Issue]) -> str | None:
    if LABEL_COLUMN not in obj:
        issues.append(error("missing_key", "missing key 'label'; add the class as a string "
                            "or an integer", line))
        return None
    value = obj[LABEL_COLUMN]
    if isinstance(value, bool) or not isinstance(value, int | str):
        issues.append(error("unknown_label_type", f"'label' is {json_type(value)} "
                            f"({value!r}); use a string or an integer", line))
        return None
    label = str(value).strip()
    if not label:
        issues.append(error("empty_label", "'label' is empty; give the class name", line))
        return None
    return label


# ------------------------------------------------------------------------- CSV/TSV


def looks_delimited(path: Path) -> bool:
    """Whether the first line is a CSV/TSV header with text and label columns."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            header = handle.readline()
    except OSError:
        return False
    delimiter = "\t" if "\t" in header else ","
    columns = [c.strip().strip('"').lower() for c in header.split(delimiter)]
    return LABEL_COLUMN in columns and any(c in columns for c in TEXT_COLUMNS)


def parse_delimited(path: Path, delimiter: str | None) -> tuple[list[Record], list[Issue]]:
    text, issues = read_text(path)
    if text is None:
        return [], issues
    if delimiter is None:
        delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    if delimiter == "\t":
        reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = [c.strip().lower() for c in next(reader)]
    except StopIteration:  # pragma: no cover - read_text refuses blank files
        return [], [error("empty_file", "the file is empty; add a header and rows")]
    text_col = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
    label_col = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
    if text_col is None or label_col is None:
        return [], [error("missing_columns", f"the {kind} header {header} lacks a "
                          f"{'text' if text_col is None else 'label'!r} column; the first "
                          "row must name the columns 'text' (or 'sentence') and 'label'", 1)]
    records: list[Record] = []
    line = reader.line_num + 1
    try:
        for row in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                issues.append(error("bad_row", f"the row has {len(row)} fields but the "
                                    f"header has {len(header)}; quote text that contains "
                                    f"the delimiter {delimiter!r}", start))
                continue
            sample, label = row[text_col], row[label_col].strip()
            if not sample.strip():
                issues.append(error("empty_text", "the text is empty; give it text or "
                                    "remove the row", start))
            elif not label:
                issues.append(error("empty_label", "the label is empty; give the class "
                                    "name", start))
            else:
                records.append(ClassificationRecord(start, sample, label))
    except csv.Error as exc:
        issues.append(error("bad_row", f"unreadable {kind} ({exc}); check the quoting",
                            reader.line_num))
    return records, issues
