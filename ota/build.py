"""Build a signed bundle from a spec file and local model files (controller side)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, BinaryIO

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ota.atomic import atomic_output
from ota.digest import file_digest
from ota.keys import SigningKey
from ota.layout import (
    FILES_PREFIX,
    MANIFEST_MEMBER,
    SIGNATURE_MEMBER,
    regular_member,
    sign_manifest,
)
from ota.manifest import (
    Compatibility,
    FileEntry,
    InputSpec,
    Manifest,
    PostprocessSpec,
    Precision,
    Variant,
)
from protocol.events import RuntimeKey


class VariantSource(BaseModel):
    """Where one variant's files are on the build machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: RuntimeKey
    precision: Precision = "fp32"
    model: str = Field(description="model file, relative to the spec's folder or absolute")
    extra_files: tuple[str, ...] = Field(default=(), description="labels, configs, ...")


class BundleSpec(BaseModel):
    """What to put in a bundle: the manifest's fields, with local paths instead of digests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: Annotated[int, Field(ge=1)]
    release: Annotated[int, Field(ge=0)] = 0
    labels: tuple[str, ...]
    input: InputSpec
    postprocess: PostprocessSpec
    expires_days: Annotated[int, Field(gt=0, le=3650)] = 365
    compatibility: Compatibility = Compatibility()
    variants: Annotated[tuple[VariantSource, ...], Field(min_length=1)]

    @classmethod
    def from_yaml(cls, path: Path) -> BundleSpec:
        """Load a spec; its relative paths are relative to its folder. Raises OSError,
        yaml.YAMLError, pydantic.ValidationError."""
        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle file as written, with the digest devices will be told to expect."""

    path: Path
    digest: str
    size: int
    manifest: Manifest


@dataclass(frozen=True)
class _Source:
    local: Path
    entry: FileEntry


def build_bundle(
    spec: BundleSpec,
    base_dir: Path,
    keys: Sequence[SigningKey],
    out_path: Path,
    now: datetime,
) -> BuiltBundle:
    """Write a signed, deterministic bundle to `out_path` atomically. Raises OSError,
    ValueError (no keys, naive `now`, clashing file names), pydantic.ValidationError."""
    if not keys:
        raise ValueError("a bundle needs at least one signing key")
    if now.tzinfo is None:
        raise ValueError("now must carry a UTC offset")
    sources, variants = _plan_files(spec, Path(base_dir))
    manifest = Manifest(
        name=spec.name,
        version=spec.version,
        release=spec.release,
        created=now,
        expires=now + timedelta(days=spec.expires_days),
        labels=spec.labels,
        input=spec.input,
        postprocess=spec.postprocess,
        compatibility=spec.compatibility,
        variants=variants,
    )
    manifest_bytes = manifest.canonical_bytes()
    out_path = Path(out_path)
    with atomic_output(out_path) as out:
        _write_tar(out, manifest_bytes, sign_manifest(manifest_bytes, keys), sources)
    digest, size = file_digest(out_path)
    return BuiltBundle(path=out_path, digest=digest, size=size, manifest=manifest)


def _plan_files(spec: BundleSpec, base_dir: Path) -> tuple[list[_Source], tuple[Variant, ...]]:
    """Name every local file inside the bundle, hashing each once."""
    per_variant: list[list[Path]] = []
    users: dict[Path, int] = {}
    for source in spec.variants:
        locals_ = list(
            dict.fromkeys((base_dir / p).resolve() for p in (source.model, *source.extra_files))
        )
        per_variant.append(locals_)
        for local in locals_:
            users[local] = users.get(local, 0) + 1

    sources: dict[Path, _Source] = {}
    taken: dict[str, Path] = {}
    variants: list[Variant] = []
    for source, locals_ in zip(spec.variants, per_variant, strict=True):
        entries: list[FileEntry] = []
        for local in locals_:
            if local not in sources:
                # a file several variants use is stored once, under a folder none of them owns
                folder = "shared" if users[local] > 1 else f"{source.runtime}-{source.precision}"
                inner = f"{folder}/{local.name}"
                if taken.setdefault(inner, local) != local:
                    raise ValueError(f"{taken[inner]} and {local} would both be {inner}")
                digest, size = file_digest(local)
                sources[local] = _Source(local, FileEntry(path=inner, sha256=digest, size=size))
            entries.append(sources[local].entry)
        variants.append(
            Variant(
                runtime=source.runtime,
                precision=source.precision,
                model=entries[0].path,
                files=tuple(entries),
            )
        )
    return list(sources.values()), tuple(variants)


def _write_tar(
    out: BinaryIO, manifest_bytes: bytes, sig_bytes: bytes, sources: Sequence[_Source]
) -> None:
    # ustar: no pax headers, so nothing but our fixed fields reaches the header
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((MANIFEST_MEMBER, manifest_bytes), (SIGNATURE_MEMBER, sig_bytes)):
            tar.addfile(regular_member(name, len(data)), io.BytesIO(data))
        for source in sources:
            entry = source.entry
            with source.local.open("rb") as raw:
                reader = _HashingReader(raw)
                tar.addfile(regular_member(FILES_PREFIX + entry.path, entry.size), reader)
            # the file was hashed once for the manifest and read again here
            if reader.hexdigest() != entry.sha256:
                raise ValueError(f"{source.local} changed while the bundle was being built")


class _HashingReader:
    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
