"""Hand-made bundles for attack tests: every member, header and signature chosen by the test.

Signatures are made here with the raw key, not with ota.layout, so a test that passes checks
the format the verifier reads, not just that builder and verifier agree with each other.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

from ota.keys import SigningKey
from ota.manifest import FileEntry, InputSpec, Manifest, PostprocessSpec, Variant

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Member:
    """One tar member as the test wants it, including types and names tarfile would not make."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def manifest_for(
    files: dict[str, bytes],
    *,
    name: str = "face",
    version: int = 3,
    created: datetime = NOW,
    lifetime: timedelta = timedelta(days=30),
    profiles: Sequence[str] = (),
) -> Manifest:
    """A one-variant manifest listing `files`; the first file is the model."""
    entries = tuple(
        FileEntry(path=path, sha256=sha256(data).hexdigest(), size=len(data))
        for path, data in files.items()
    )
    return Manifest.model_validate(
        {
            "name": name,
            "version": version,
            "created": created,
            "expires": created + lifetime,
            "labels": ("face",),
            "input": InputSpec(width=128, height=128),
            "postprocess": PostprocessSpec(kind="blazeface"),
            "compatibility": {"profiles": tuple(profiles)},
            "variants": (Variant(runtime="litert", model=entries[0].path, files=entries),),
        }
    )


def signature_doc(manifest_bytes: bytes, keys: Iterable[SigningKey]) -> bytes:
    return json.dumps(
        {"signatures": [{"keyid": k.keyid, "sig": k.sign(manifest_bytes).hex()} for k in keys]}
    ).encode()


def head(manifest_bytes: bytes, keys: Iterable[SigningKey]) -> list[Member]:
    """manifest.json then manifest.sig, signed by `keys` in order (repeats kept)."""
    return [
        Member("manifest.json", manifest_bytes),
        Member("manifest.sig", signature_doc(manifest_bytes, keys)),
    ]


def file_members(files: dict[str, bytes]) -> list[Member]:
    return [Member(f"files/{path}", data) for path, data in files.items()]


def write_tar(path: Path, members: Iterable[Member]) -> Path:
    # GNU format so that long or odd names reach the header exactly as given
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.linkname = member.linkname
            info.mode = 0o644
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return path


def forge(
    path: Path,
    files: dict[str, bytes],
    keys: Sequence[SigningKey],
    *,
    manifest: Manifest | None = None,
    extra: Iterable[Member] = (),
) -> Path:
    """A bundle of `files` signed by `keys` (manifest listing them unless given), plus `extra`."""
    raw = (manifest or manifest_for(files)).canonical_bytes()
    return write_tar(path, [*head(raw, keys), *file_members(files), *extra])
