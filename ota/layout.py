"""The bundle file's layout: member names and order, tar headers, the signature document."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ota.canonical import canonical_json
from ota.keys import SigningKey

MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
FILES_PREFIX = "files/"

# every header carries these, so equal inputs give byte-equal bundles
FIXED_MTIME = 0
FIXED_MODE = 0o644

_Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]+$", max_length=1024)]


class Signature(BaseModel):
    """One release key's Ed25519 signature over the raw manifest bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    keyid: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    sig: _Hex


class SignatureDocument(BaseModel):
    """The content of `manifest.sig`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    signatures: Annotated[tuple[Signature, ...], Field(max_length=32)]


def sign_manifest(manifest_bytes: bytes, keys: Sequence[SigningKey]) -> bytes:
    """The `manifest.sig` bytes: one signature per distinct key, in the order given."""
    by_id = {key.keyid: key for key in keys}
    doc = SignatureDocument(
        signatures=tuple(
            Signature(keyid=keyid, sig=key.sign(manifest_bytes).hex())
            for keyid, key in by_id.items()
        )
    )
    return canonical_json(doc.model_dump(mode="json"))


def regular_member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header for a plain file with the fixed owner, mode and time."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = tarfile.REGTYPE
    info.mtime = FIXED_MTIME
    info.mode = FIXED_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
