from __future__ import annotations

import pytest

from gptstore.errors import InvalidRequest
from gptstore.storage.manifest import FileEntry, Manifest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_manifest_is_canonical() -> None:
    a = Manifest((FileEntry("b.json", D2, 2), FileEntry("a.bin", D1, 1)))
    b = Manifest((FileEntry("a.bin", D1, 1), FileEntry("b.json", D2, 2)))
    assert a.to_json() == b.to_json()
    assert a.digest == b.digest
    assert a.total_size == 3
    assert Manifest.from_json(a.to_json()).files == tuple(sorted(a.files, key=lambda f: f.path))


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../b", "./a"])
def test_file_paths_must_stay_inside(path: str) -> None:
    with pytest.raises(InvalidRequest):
        FileEntry(path, D1, 1)


def test_foreign_json_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="not a gptstore manifest"):
        Manifest.from_json(b'{"files": []}')
