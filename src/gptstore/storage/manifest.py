"""Manifests: the list of files that make up one model version, by digest.

A manifest is canonical JSON (sorted keys, no whitespace), so equal contents give an
equal manifest digest. The manifest itself is stored as a blob, and the version row
points at it: a version is exactly its manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from gptstore.errors import InvalidRequest

MEDIA_TYPE = "application/vnd.gptstore.manifest.v1+json"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative POSIX path inside the version, e.g. "model.safetensors"
    digest: str
    size: int

    def __post_init__(self) -> None:
        p = PurePosixPath(self.path)
        if p.is_absolute() or ".." in p.parts or not self.path or self.path != p.as_posix():
            raise InvalidRequest(f"file path {self.path!r} must be relative, without '..'")


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "mediaType": MEDIA_TYPE,
            "files": [
                {"path": f.path, "digest": f.digest, "size": f.size}
                for f in sorted(self.files, key=lambda f: f.path)
            ],
            "annotations": dict(sorted(self.annotations.items())),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        if doc.get("mediaType") != MEDIA_TYPE:
            raise InvalidRequest(f"not a gptstore manifest (mediaType {doc.get('mediaType')!r})")
        files = tuple(FileEntry(f["path"], f["digest"], int(f["size"])) for f in doc["files"])
        return cls(files=files, annotations=dict(doc.get("annotations", {})))
