"""What the bundle page shows beyond the manifest: the signatures in the stored bundle file,
each with what the controller's trust store says of its key."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ota.layout import SIGNATURE_MEMBER, SignatureDocument
from ota.trust_file import load_trust_store

MAX_SIGNATURE_BYTES = 64 * 1024


@dataclass(frozen=True)
class SignatureView:
    keyid: str
    sig: str
    key: str  # trusted, revoked, unknown, unchecked


@dataclass(frozen=True)
class Signatures:
    signatures: list[SignatureView]
    threshold: int | None
    note: str = ""


def bundle_signatures(bundle_file: Path, trust_path: Path | None) -> Signatures:
    """The signatures of the bundle at `bundle_file`; problems become the `note`."""
    try:
        with tarfile.open(bundle_file, "r:*") as tar:
            member = tar.extractfile(SIGNATURE_MEMBER)
            if member is None:
                return Signatures([], None, f"{SIGNATURE_MEMBER} is not a file")
            data = member.read(MAX_SIGNATURE_BYTES + 1)
        if len(data) > MAX_SIGNATURE_BYTES:
            return Signatures([], None, f"{SIGNATURE_MEMBER} is too large")
        doc = SignatureDocument.model_validate_json(data)
    except (OSError, KeyError, tarfile.TarError, ValidationError) as exc:
        return Signatures([], None, f"the signatures could not be read: {exc}")
    store, note = None, "no trust store configured: keys not checked here"
    if trust_path is not None:
        try:
            store, note = load_trust_store(trust_path), ""
        except (OSError, ValueError) as exc:
            note = f"the trust store could not be read: {exc}"
    views = []
    for s in doc.signatures:
        if store is None:
            key = "unchecked"
        elif s.keyid in store.revoked:
            key = "revoked"
        elif s.keyid in store.release_keys:
            key = "trusted"
        else:
            key = "unknown"
        views.append(SignatureView(s.keyid, s.sig, key))
    return Signatures(views, store.threshold if store is not None else None, note)
