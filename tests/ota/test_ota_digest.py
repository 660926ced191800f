"""The one file digest: what names a stored bundle and what a manifest lists per file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ota.digest import file_digest


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) * 2 + 17])
def test_digest_and_size_match_the_whole_file(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "bundle"
    path.write_bytes(data)

    assert file_digest(path) == (hashlib.sha256(data).hexdigest(), size)


def test_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        file_digest(tmp_path / "absent")
