"""What a bundle file claims, then whether it verifies (shown by `edgefleet bundle inspect`).

The manifest is shown before its signature is checked, so every line above the verdict is a
claim by whoever made the file; only the verdict is the verifier's word.
"""

from __future__ import annotations

import tarfile
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ota.errors import BundleRefused
from ota.layout import MANIFEST_MEMBER, SIGNATURE_MEMBER, SignatureDocument
from ota.manifest import Manifest
from ota.trust_file import load_trust_store
from ota.verify import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, verify_bundle


class UnreadableBundle(Exception):
    """The file is not a bundle whose head can be shown at all."""


def read_head(path: Path) -> tuple[Manifest, list[str]]:
    """The manifest and signing keyids as the file states them, unverified.

    Raises UnreadableBundle, OSError."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member, cap in zip(tar, (MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES), strict=False):
                if not member.isreg() or member.size > cap:
                    raise UnreadableBundle(f"{member.name!r} is not a small plain file")
                stream = tar.extractfile(member)
                members[member.name] = stream.read() if stream is not None else b""
    except tarfile.TarError as exc:
        raise UnreadableBundle(f"not a readable tar: {exc}") from exc
    try:
        manifest = Manifest.model_validate_json(members[MANIFEST_MEMBER])
        raw_sigs = members.get(SIGNATURE_MEMBER)
        # an unsigned bundle is still shown; the verdict says what is wrong with it
        sigs = SignatureDocument.model_validate_json(raw_sigs) if raw_sigs else None
    except KeyError as exc:
        raise UnreadableBundle(f"no {MANIFEST_MEMBER} at the start") from exc
    except ValidationError as exc:
        raise UnreadableBundle(f"unreadable head: {exc.errors()[0]['msg']}") from exc
    return manifest, [s.keyid for s in sigs.signatures] if sigs else []


def verdict(path: Path, trust_path: Path | None, now: datetime) -> dict[str, Any]:
    """What the verifier says about the file under `trust_path`; never raises."""
    if trust_path is None:
        return {"status": "unchecked", "reason": None, "detail": "no --trust given"}
    try:
        trust = load_trust_store(trust_path)
    except (OSError, ValueError) as exc:
        return {"status": "unchecked", "reason": None, "detail": f"trust file unusable: {exc}"}
    try:
        with path.open("rb") as stream:
            verify_bundle(stream, trust, now)
    except BundleRefused as exc:
        return {"status": "refused", "reason": exc.reason.value, "detail": exc.detail}
    except OSError as exc:
        return {"status": "refused", "reason": None, "detail": str(exc)}
    return {"status": "ok", "reason": None, "detail": f"root version {trust.root_version}"}


def inspect_report(path: Path, trust_path: Path | None, now: datetime) -> dict[str, Any]:
    """The manifest, its signatures and the verdict, as one JSON-ready dict.

    Raises UnreadableBundle, OSError."""
    manifest, keyids = read_head(path)
    return {
        "file": str(path),
        "size": path.stat().st_size,
        "name": manifest.name,
        "version": manifest.version,
        "created": manifest.created.isoformat(),
        "expires": manifest.expires.isoformat(),
        "profiles": list(manifest.compatibility.profiles),
        "min_agent_version": manifest.compatibility.min_agent_version,
        "variants": [
            {"runtime": v.runtime, "precision": v.precision, "model": v.model}
            for v in manifest.variants
        ],
        "files": [e.model_dump() for e in manifest.all_files().values()],
        "signatures": keyids,
        "verdict": verdict(path, trust_path, now),
    }
