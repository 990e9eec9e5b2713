"""The byte-level screen of an uploaded training file, fed chunk by chunk as it streams in
(before the blob is committed, so a refused upload leaves no blob and no row).

A training file is UTF-8 text with a training extension; the screen refuses, naming the
byte or line and the fix:

- an extension that is not a training format (`.safetensors`, `.pkl`, `.zip`, ...):
  uploads are data, never weights or code, and are never unpickled or executed;
- an archive, compressed stream, pickle or executable, told by its first bytes whatever
  its name (a zip bomb named `.jsonl` is refused at its first four bytes, unread);
- bytes that are not UTF-8, or a NUL byte (binary data);
- a line over `MAX_LINE_BYTES` (one 100 MB line would be parsed in one piece);
- in JSON files, a line nested deeper than `MAX_JSON_DEPTH` (Python's parser recurses
  per level; 100,000 levels would exhaust the stack).

Deliberately not here: whether the records make sense for training (the validation
report of `data/report.py` says that, line by line, and a file with such errors is
stored with status `error`, as OpenAI does).
"""

from __future__ import annotations

import codecs
from pathlib import PurePosixPath

from gptstore.errors import InvalidRequest

#: extensions of the training formats (data/formats)
TRAINING_SUFFIXES = (".jsonl", ".json", ".txt", ".csv", ".tsv")
JSON_SUFFIXES = (".jsonl", ".json")
MAX_LINE_BYTES = 4 * 1024**2
MAX_JSON_DEPTH = 64
#: first bytes of things that are not text -> what they are
MAGIC = [
    (b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "a zip archive"),
    (b"\x1f\x8b", "a gzip stream"), (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ\x00", "an xz stream"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd stream"), (b"\x7fELF", "an executable"),
    (b"MZ", "a Windows executable"), (b"\x80\x02", "a Python pickle"),
    (b"\x80\x03", "a Python pickle"), (b"\x80\x04", "a Python pickle"),
    (b"\x80\x05", "a Python pickle"), (b"\x93NUMPY", "a NumPy array"),
]
_MAGIC_LEN = max(len(m) for m, _ in MAGIC)
_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)


def check_training_filename(filename: str) -> None:
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in TRAINING_SUFFIXES:
        raise InvalidRequest(
            f"file {filename!r}: {suffix or 'no extension'} is not a training-file type; "
            f"upload training data as {', '.join(TRAINING_SUFFIXES)} (model weights and "
            "code are never accepted as uploads)", param="file")


def json_depth(line: bytes, depth: int = 0, in_string: bool = False
               ) -> tuple[int, int, bool]:
    """The deepest nesting of arrays and objects in `line` of a JSON text (strings
    skipped), starting at `depth` / `in_string`; returns (deepest, depth, in_string) so a
    multi-line document carries its state from line to line."""
    # escaped backslashes first, then escaped quotes: what is left of `"` delimits strings
    kept = line.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    deepest = depth
    for byte in kept:
        if byte == 0x22:  # "
            in_string = not in_string
        elif in_string:
            continue
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest, depth, in_string


class UploadScreen:
    """Feed it the file's bytes in order; it raises `InvalidRequest` at the first problem."""

    def __init__(self, filename: str) -> None:
        check_training_filename(filename)
        self.filename = filename
        suffix = PurePosixPath(filename).suffix.lower()
        self.is_json = suffix in JSON_SUFFIXES
        #: a .json file is one document over many lines: its nesting carries over lines
        self.one_document = suffix == ".json"
        self._depth, self._in_string = 0, False
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._head = b""
        self._partial = bytearray()  # the current line's bytes so far
        self._offset = 0  # bytes screened so far
        self._line = 1  # number of the current line

    def _refuse(self, problem: str, fix: str) -> InvalidRequest:
        return InvalidRequest(f"file {self.filename!r}, line {self._line}: {problem}; {fix}",
                              param="file")

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if len(self._head) < _MAGIC_LEN:
            self._head += chunk[:_MAGIC_LEN - len(self._head)]
            for magic, what in MAGIC:
                if self._head.startswith(magic):
                    raise InvalidRequest(
                        f"file {self.filename!r} is {what}, not text; training files are "
                        "UTF-8 text (JSONL, CSV, TSV or plain text), uploaded uncompressed",
                        param="file")
        if b"\x00" in chunk:
            self._line += chunk.count(b"\n", 0, chunk.index(b"\x00"))
            raise self._refuse("a NUL byte: the file is binary, not text",
                               "upload the training data as UTF-8 text")
        try:
            self._decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            self._line += chunk.count(b"\n", 0, exc.start)
            raise self._refuse(f"byte {self._offset + exc.start} is not UTF-8",
                               "save the file as UTF-8") from None
        self._offset += len(chunk)
        lines = chunk.split(b"\n")
        for i, piece in enumerate(lines):
            if len(self._partial) + len(piece) > MAX_LINE_BYTES:
                raise self._refuse(f"the line is longer than {MAX_LINE_BYTES} bytes",
                                   "split it into several examples")
            self._partial += piece
            if i < len(lines) - 1:  # the line ended in this chunk
                self._end_line()

    def finish(self) -> None:
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise self._refuse("the file ends inside a UTF-8 character",
                               "save the file as UTF-8") from None
        if self._partial:
            self._end_line()

    def _end_line(self) -> None:
        if self.is_json:
            deepest, depth, in_string = json_depth(bytes(self._partial), self._depth,
                                                   self._in_string)
            if deepest > MAX_JSON_DEPTH:
                raise self._refuse(f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                                   "flatten the record")
            if self.one_document:
                self._depth, self._in_string = depth, in_string
        self._partial.clear()
        self._line += 1
