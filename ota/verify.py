"""Verify a bundle as it streams: signatures first, then the manifest, then every file.

A pure core: it reads only the stream it is handed, takes the time as an argument and
writes file bytes only through the sink it is handed.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from pydantic import ValidationError

from ota.canonical import check_strict_json, first_problem
from ota.errors import BundleRefused
from ota.layout import FILES_PREFIX, MANIFEST_MEMBER, SIGNATURE_MEMBER, SignatureDocument
from ota.manifest import FileEntry, Manifest, check_nesting
from ota.tar_guard import TarGuard
from ota.trust import TrustStore
from protocol.events import RefusalReason as R

MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 64 << 10
DEFAULT_MAX_BUNDLE_BYTES = 8 << 30
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
_CHUNK = 1 << 20
# only plain files; CONTTYPE and GNU sparse members are regular to tarfile but not to us
_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)

VersionFloor = int | Callable[[str], int | None] | None


class ByteStream(Protocol):
    """Anything with a file's `read`: an open file, a socket reader, an assembled download."""

    def read(self, size: int = -1, /) -> bytes: ...


class SinkWriter(Protocol):
    def write(self, data: bytes, /) -> object: ...


class FileSink(Protocol):
    """Where verified file bytes go while they stream; nothing counts until `commit`."""

    def open(self, path: str) -> SinkWriter:
        """Start receiving the bytes of bundle file `path`."""
        ...

    def commit(self, path: str) -> None:
        """`path` streamed completely and its digest matched; make it visible."""
        ...

    def discard(self) -> None:
        """The bundle was refused; remove everything opened or committed."""
        ...


def verify_bundle(
    stream: ByteStream,
    trust: TrustStore,
    now: datetime,
    *,
    installed_version: VersionFloor = None,
    profile: str | None = None,
    sink: FileSink | None = None,
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> Manifest:
    """Check a bundle end to end and return its manifest; `installed_version` is the
    version installed for the bundle's name, or a lookup by name.
    Raises BundleRefused; ValueError for a naive `now`."""
    if now.tzinfo is None:
        raise ValueError("now must carry a UTC offset")
    try:
        if trust.expires is not None and now > trust.expires + clock_skew:
            # an expired root vouches for nothing, however good the signatures
            raise BundleRefused(R.EXPIRED, f"trust root expired {trust.expires.isoformat()}")
        # every header passes the guard before tarfile reads it (extended headers, the end)
        guard = TarGuard(_CappedReader(stream, max_bundle_bytes))
        try:
            # "r|": strictly sequential, uncompressed; no seeking, so nothing is read twice
            with tarfile.open(fileobj=guard, mode="r|", bufsize=_CHUNK) as tar:  # type: ignore[call-overload]
                manifest = _read_head(tar, trust)
                _check_manifest(manifest, now, installed_version, profile, clock_skew)
                _read_files(tar, guard, manifest, max_bundle_bytes, sink)
                # nothing may follow the end-of-archive marker but its zero padding
                guard.finish(tar.offset)
        except (tarfile.TarError, EOFError) as exc:
            raise BundleRefused(R.MALFORMED_BUNDLE, f"not a readable tar: {exc}") from exc
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    return manifest


def _read_head(tar: tarfile.TarFile, trust: TrustStore) -> Manifest:
    first = tar.next()
    if first is None or first.name != MANIFEST_MEMBER or first.type not in _PLAIN_TYPES:
        raise BundleRefused(R.MALFORMED_BUNDLE, f"first member must be {MANIFEST_MEMBER}")
    raw = _read_small(tar, first, MAX_MANIFEST_BYTES)
    second = tar.next()
    if second is None or second.name != SIGNATURE_MEMBER:
        raise BundleRefused(R.UNSIGNED, f"no {SIGNATURE_MEMBER} after the manifest")
    if second.type not in _PLAIN_TYPES:
        raise BundleRefused(R.UNSAFE_MEMBER, f"{SIGNATURE_MEMBER} is not a plain file")
    _check_signatures(raw, _read_small(tar, second, MAX_SIGNATURE_BYTES), trust)
    # parsed only now: before this point the bytes may come from anyone
    return _parse_manifest(raw)


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
    if member.size > cap:
        raise BundleRefused(R.TOO_LARGE, f"{member.name} is {member.size} bytes, cap {cap}")
    f = tar.extractfile(member)
    data = f.read() if f is not None else b""
    if len(data) != member.size:
        raise BundleRefused(R.MALFORMED_BUNDLE, f"{member.name} is truncated")
    return data


def _check_signatures(manifest_bytes: bytes, sig_bytes: bytes, trust: TrustStore) -> None:
    try:
        doc = SignatureDocument.model_validate_json(sig_bytes)
    except ValidationError as exc:
        raise BundleRefused(
            R.MALFORMED_BUNDLE, f"{SIGNATURE_MEMBER}: {first_problem(exc)}"
        ) from exc
    if not doc.signatures:
        raise BundleRefused(R.UNSIGNED, "the signature list is empty")
    valid: set[str] = set()
    bad, unknown, revoked = [], [], []
    for entry in doc.signatures:
        key = trust.trusted_key(entry.keyid)
        if entry.keyid in trust.revoked:
            revoked.append(entry.keyid)
        elif key is None:
            unknown.append(entry.keyid)
        elif len(entry.sig) == 128 and key.verify(bytes.fromhex(entry.sig), manifest_bytes):
            # a set: the same key signing twice still counts once toward the threshold
            valid.add(entry.keyid)
        else:
            bad.append(entry.keyid)
    if len(valid) >= trust.threshold:
        return
    summary = f"{len(valid)} of {trust.threshold} required signatures valid"
    if not valid:
        # nothing counted: name the most telling cause, a forged or altered manifest first
        for reason, ids in (
            (R.BAD_SIGNATURE, bad),
            (R.REVOKED_KEY, revoked),
            (R.UNKNOWN_KEY, unknown),
        ):
            if ids:
                raise BundleRefused(reason, f"{summary}; key {ids[0][:16]}...")
    # some counted, but fewer than the threshold
    raise BundleRefused(R.THRESHOLD_NOT_MET, summary)


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        # depth first: the json module recurses per level and would end in RecursionError
        check_nesting(raw)
        # json next, to refuse what pydantic's parser would let through
        check_strict_json(raw)
        return Manifest.model_validate_json(raw, strict=True)
    except ValueError as exc:
        raise BundleRefused(R.MALFORMED_MANIFEST, first_problem(exc)) from exc
    except RecursionError as exc:  # belt and braces: check_nesting should have refused it
        raise BundleRefused(R.MALFORMED_MANIFEST, "nested too deeply") from exc


def _check_manifest(
    manifest: Manifest,
    now: datetime,
    installed_version: VersionFloor,
    profile: str | None,
    skew: timedelta,
) -> None:
    if manifest.expires <= manifest.created:
        raise BundleRefused(R.MALFORMED_MANIFEST, "expires is not after created")
    if now > manifest.expires + skew:
        raise BundleRefused(R.EXPIRED, f"expired {manifest.expires.isoformat()}")
    if manifest.created > now + skew:
        raise BundleRefused(R.NOT_YET_VALID, f"created {manifest.created.isoformat()}")
    floor = installed_version(manifest.name) if callable(installed_version) else installed_version
    # equal is a reinstall of the same release, which is allowed
    if floor is not None and manifest.version < floor:
        raise BundleRefused(
            R.ROLLBACK, f"{manifest.name} version {manifest.version} < installed {floor}"
        )
    profiles = manifest.compatibility.profiles
    if profile is not None and profiles and profile not in profiles:
        raise BundleRefused(R.INCOMPATIBLE_PROFILE, f"{profile} not in {', '.join(profiles)}")


def _read_files(
    tar: tarfile.TarFile,
    guard: TarGuard,
    manifest: Manifest,
    max_bundle_bytes: int,
    sink: FileSink | None,
) -> None:
    expected = manifest.all_files()
    total = sum(entry.size for entry in expected.values())
    if total > max_bundle_bytes:
        raise BundleRefused(R.TOO_LARGE, f"files total {total} bytes, cap {max_bundle_bytes}")
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        path = _listed_path(member, expected)
        if path in seen:
            raise BundleRefused(R.DUPLICATE_FILE, f"{member.name} appears twice")
        seen.add(path)
        _stream_file(tar, guard, member, expected[path], sink)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BundleRefused(R.MISSING_FILE, f"{len(missing)} listed files absent: {missing[0]}")


def _listed_path(member: tarfile.TarInfo, expected: dict[str, FileEntry]) -> str:
    name = member.name
    if member.type not in _PLAIN_TYPES or member.sparse is not None:
        raise BundleRefused(R.UNSAFE_MEMBER, f"{name!r} is not a plain file")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts:
        raise BundleRefused(R.UNSAFE_PATH, f"{name!r} escapes the bundle")
    path = name[len(FILES_PREFIX) :]
    if not name.startswith(FILES_PREFIX) or path not in expected:
        raise BundleRefused(R.UNLISTED_FILE, f"{name!r} is not in the manifest")
    return path


def _stream_file(
    tar: tarfile.TarFile,
    guard: TarGuard,
    member: tarfile.TarInfo,
    entry: FileEntry,
    sink: FileSink | None,
) -> None:
    # checked before reading, so a member longer than listed is never read at all
    if member.size != entry.size:
        raise BundleRefused(
            R.SIZE_MISMATCH, f"{entry.path} is {member.size} bytes, listed {entry.size}"
        )
    # read straight from the tar stream: extractfile's buffered wrapper copies every byte twice
    source = tar.fileobj
    if source is None:
        raise BundleRefused(R.MALFORMED_BUNDLE, f"{member.name!r} has no content")
    out = sink.open(entry.path) if sink is not None else None
    digest = hashlib.sha256()
    remaining = entry.size
    while remaining:
        # what tarfile already read ahead is drained first, whole, and then whole blocks of its
        # read size: both come back without tarfile splicing buffers, i.e. without a copy
        ahead = guard.count - source.tell()
        chunk = source.read(min(ahead if ahead > 0 else _CHUNK, remaining))
        if not chunk:
            raise BundleRefused(R.MALFORMED_BUNDLE, f"{entry.path} is truncated")
        remaining -= len(chunk)
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
    if digest.hexdigest() != entry.sha256:
        raise BundleRefused(R.HASH_MISMATCH, f"{entry.path} does not match its sha256")
    if sink is not None:
        sink.commit(entry.path)


class _CappedReader:
    """Refuses the bundle as soon as more than `cap` bytes have been read from it."""

    def __init__(self, raw: ByteStream, cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        # never ask for more than one byte past the cap, even when tarfile asks for all
        limit = self._cap + 1 - self.count
        data = self._raw.read(limit if size < 0 else min(size, limit))
        self.count += len(data)
        if self.count > self._cap:
            raise BundleRefused(R.TOO_LARGE, f"bundle exceeds {self._cap} bytes")
        return data
