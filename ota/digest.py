"""The sha256 that names a bundle file and that a manifest lists for each file in it."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20


def file_digest(path: Path) -> tuple[str, int]:
    """The sha256 (lowercase hex) and size in bytes of the file at `path`.

    Raises OSError.
    """
    digest = hashlib.sha256()
    size = 0
    # read in blocks: bundles run to gigabytes and devices have little memory
    with Path(path).open("rb") as src:
        while block := src.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
