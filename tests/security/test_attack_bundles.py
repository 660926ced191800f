"""Bundles shaped by an attacker around the tar format itself, installed on a real device store.

The 56 hostile bundles in tests/ota (links, paths, duplicates, size lies, signatures, rollback)
are not repeated here; these are the cases that reach `tarfile` before or after the signed
manifest: extended headers, bytes after the end of the archive, and a deeply nested manifest.
Each case checks the refusal's reason and that the device's data folder (slots, pointer, trust
store) is byte for byte what it was.
"""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from ota.canonical import canonical_json
from ota.keys import SigningKey
from ota.tar_guard import RECORD
from ota.trust import TrustStore
from protocol.events import RefusalReason
from tests.ota.ota_forge import Member, file_members, head, manifest_for, write_tar
from tests.security.device_harness import (
    Device,
    chunks_of,
    good_bundle_at,
    make_device,
    offer_for,
    random_files,
)

BOMB_BYTES = 48 << 20
# the refusal may cost a read buffer or two, never the header's size
MEMORY_ALLOWANCE = 8 << 20


@pytest.fixture
def device(tmp_path: Path, trust: TrustStore, release_key: SigningKey) -> Device:
    """A device already running a good bundle, so both slots and the pointer are in play."""
    dev = make_device(tmp_path, trust)
    good = good_bundle_at(tmp_path / "running.bundle", random_files(), release_key)
    assert dev.deployer.install(good)
    return dev


@pytest.fixture
def good(tmp_path: Path, release_key: SigningKey) -> Path:
    return good_bundle_at(tmp_path / "good.bundle", random_files(), release_key)


def refused(device: Device, bundle: Path) -> RefusalReason:
    """Install `bundle`; it must be refused and leave the data folder as it was."""
    before = device.disk()
    assert not device.deployer.install(bundle)
    assert device.disk() == before
    failed = device.recorder.of("failed")[-1]
    return RefusalReason(failed.reason)


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def _bomb(path: Path, kind: bytes, size: int, then: bytes = b"") -> Path:
    """An archive that opens with one extended header of `size` bytes, written in pieces."""
    with path.open("wb") as out:
        out.write(_header("././@LongLink", kind, size))
        block = b"a" * (1 << 20)
        left = size
        while left:
            out.write(block[: min(left, len(block))])
            left -= min(left, len(block))
        out.write(b"\0" * (-size % 512))
        out.write(then)
        out.write(b"\0" * 1024)
    return path


def _peak_while(action: object) -> int:
    tracemalloc.start()
    try:
        assert callable(action)
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_pax_header_bomb_is_refused_before_it_is_read(device: Device, tmp_path: Path) -> None:
    """PAX header bomb: a 48 MiB extended header that tarfile would read whole into memory."""
    bomb = _bomb(tmp_path / "pax.tar", tarfile.XHDTYPE, BOMB_BYTES)
    reasons: list[RefusalReason] = []
    peak = _peak_while(lambda: reasons.append(refused(device, bomb)))
    assert reasons == [RefusalReason.EXTENDED_HEADER]
    assert peak < MEMORY_ALLOWANCE


def test_gnu_long_name_bomb_keeps_memory_flat(device: Device, tmp_path: Path) -> None:
    """GNU long-name bomb: 48 MiB of member name ahead of the signature check."""
    bomb = _bomb(tmp_path / "longname.tar", tarfile.GNUTYPE_LONGNAME, BOMB_BYTES)
    reasons: list[RefusalReason] = []
    peak = _peak_while(lambda: reasons.append(refused(device, bomb)))
    print(f"RESULT longname_header_mib={BOMB_BYTES >> 20} verify_peak_mib={peak / 2**20:.2f}")
    assert reasons == [RefusalReason.EXTENDED_HEADER]
    assert peak < MEMORY_ALLOWANCE


def test_gnu_long_link_bomb_is_refused(device: Device, tmp_path: Path) -> None:
    """GNU long-link bomb: a huge link target header, read whole by tarfile."""
    bomb = _bomb(tmp_path / "longlink.tar", tarfile.GNUTYPE_LONGLINK, 4 << 20)
    assert refused(device, bomb) is RefusalReason.EXTENDED_HEADER


def test_chain_of_small_extended_headers_is_refused(device: Device, tmp_path: Path) -> None:
    """Header chain: thousands of small long-name headers, one tarfile recursion each."""
    one = _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 10) + b"n" * 10 + b"\0" * 502
    path = tmp_path / "chain.tar"
    path.write_bytes(one * 5000 + b"\0" * 1024)
    assert refused(device, path) is RefusalReason.EXTENDED_HEADER


def test_global_pax_header_is_refused(device: Device, tmp_path: Path) -> None:
    """Global PAX header: one record renames or resizes every member after it."""
    out = io.BytesIO()
    renamed = {"path": "files/../../etc/cron.d/x"}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers=renamed) as tar:
        tar.addfile(tarfile.TarInfo("manifest.json"))
    path = tmp_path / "global.tar"
    path.write_bytes(out.getvalue())
    assert refused(device, path) is RefusalReason.EXTENDED_HEADER


def test_pax_size_override_is_refused(device: Device, good: Path, tmp_path: Path) -> None:
    """PAX size override: the member's size moves where the next header is read from."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 4
        info.pax_headers = {"size": "0"}
        tar.addfile(info, io.BytesIO(b"{}{}"))
    path = tmp_path / "size.tar"
    path.write_bytes(out.getvalue())
    assert refused(device, path) is RefusalReason.EXTENDED_HEADER


def test_gnu_sparse_member_is_refused(device: Device, tmp_path: Path) -> None:
    """GNU sparse member: a map of holes that tarfile reads block after block."""
    path = tmp_path / "sparse.tar"
    path.write_bytes(_header("manifest.json", tarfile.GNUTYPE_SPARSE, 0) + b"\0" * 1024)
    assert refused(device, path) is RefusalReason.UNSAFE_MEMBER


def test_bytes_after_the_end_of_archive_are_refused(
    device: Device, good: Path, tmp_path: Path
) -> None:
    """Trailing bytes: data appended after the end-of-archive marker of a signed bundle."""
    path = tmp_path / "trailing.bundle"
    path.write_bytes(good.read_bytes() + b"#!/bin/sh\nrm -rf /\n")
    assert refused(device, path) is RefusalReason.TRAILING_DATA


def test_second_archive_appended_is_refused(device: Device, good: Path, tmp_path: Path) -> None:
    """Second archive: a whole tar appended, which `tar -i` or a lax reader would unpack."""
    evil = write_tar(tmp_path / "evil.tar", [Member("files/evil.sh", b"#!/bin/sh\n")])
    path = tmp_path / "two.bundle"
    path.write_bytes(good.read_bytes() + evil.read_bytes())
    assert refused(device, path) is RefusalReason.TRAILING_DATA


def test_second_archive_after_one_zero_block_is_refused(
    device: Device, good: Path, tmp_path: Path
) -> None:
    """Half end marker: one zero block (where tarfile stops), then a second archive."""
    data = good.read_bytes().rstrip(b"\0")
    first_zero = -(-len(data) // 512) * 512
    evil = write_tar(tmp_path / "evil.tar", [Member("files/evil.sh", b"#!/bin/sh\n")])
    path = tmp_path / "half.bundle"
    path.write_bytes(data.ljust(first_zero + 512, b"\0") + evil.read_bytes())
    assert refused(device, path) is RefusalReason.TRAILING_DATA


def test_non_zero_byte_in_the_record_padding_is_refused(
    device: Device, good: Path, tmp_path: Path
) -> None:
    """Dirty padding: a non-zero byte hidden in the zero padding of the last record."""
    data = bytearray(good.read_bytes())
    assert len(data) % RECORD == 0 and data[-1] == 0
    data[-1] = 0x41
    path = tmp_path / "padding.bundle"
    path.write_bytes(bytes(data))
    assert refused(device, path) is RefusalReason.TRAILING_DATA


def test_zeros_past_the_last_record_are_refused(device: Device, good: Path, tmp_path: Path) -> None:
    """Padding past the record: more zero bytes than the record size can explain."""
    path = tmp_path / "zeros.bundle"
    path.write_bytes(good.read_bytes() + b"\0" * RECORD)
    assert refused(device, path) is RefusalReason.TRAILING_DATA


def test_deeply_nested_signed_manifest_is_malformed_and_the_deployment_ends(
    tmp_path: Path, trust: TrustStore, release_key: SigningKey
) -> None:
    """Deep nesting: a validly signed manifest 100,000 levels deep (RecursionError before)."""
    device = make_device(tmp_path, trust)
    files = random_files()
    plain = canonical_json(manifest_for(files).model_dump(mode="json"))
    depth = 100_000
    nested = plain.replace(
        b'"params":{}', b'"params":{"x":' + b"[" * depth + b"]" * depth + b"}", 1
    )
    assert nested != plain
    # signed as it is: the attacker holds a release key, or the release tool was fooled
    bundle = write_tar(
        tmp_path / "deep.bundle", [*head(nested, [release_key]), *file_members(files)]
    )
    before = device.disk()
    command = offer_for(bundle)
    device.deployer.on_deploy(command)
    for chunk in chunks_of(bundle):
        device.deployer.on_chunk(command.bundle.digest, chunk)
    last = device.recorder.last()
    # a final status, with the reason: not an exception and a deployment stuck at installing
    assert (last.kind, last.reason) == ("failed", RefusalReason.MALFORMED_MANIFEST.value)
    assert device.disk() == before
    assert device.store.current() is None
    assert device.recorder.activated == []
