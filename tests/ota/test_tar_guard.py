"""The header guard in front of tarfile: what it lets through and what it stops, and where."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ota.errors import BundleRefused
from ota.keys import SigningKey
from ota.tar_guard import BLOCK, MAX_EXTENDED_HEADER_BYTES, RECORD, TarGuard
from ota.trust import TrustStore
from ota.verify import verify_bundle
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, Member, head, manifest_for, write_tar

MODEL = "litert-fp32/model.tflite"


def _read_all(data: bytes) -> tuple[list[str], TarGuard]:
    guard = TarGuard(io.BytesIO(data))
    with tarfile.open(fileobj=guard, mode="r|") as tar:  # type: ignore[call-overload]
        names = [member.name for member in tar]
        guard.finish(tar.offset)
    return names, guard


def _tar(members: list[tarfile.TarInfo], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size))
    return out.getvalue()


def _info(name: str, length: int = 3, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = length
    info.pax_headers = dict(pax or {})
    return info


def test_plain_archive_with_its_record_padding_passes_whole() -> None:
    data = _tar([_info("a"), _info("b", 700)], tarfile.USTAR_FORMAT)
    assert len(data) % RECORD == 0
    names, guard = _read_all(data)
    assert names == ["a", "b"]
    assert guard.count <= len(data)


def test_small_pax_and_gnu_long_names_pass_to_tarfile() -> None:
    long = "d/" + "n" * 300
    names, _ = _read_all(_tar([_info(long), _info("p", pax={"comment": "hello"})]))
    assert names == [long, "p"]
    names, _ = _read_all(_tar([_info(long)], tarfile.GNU_FORMAT))
    assert names == [long]


def test_long_name_over_the_cap_is_refused() -> None:
    data = _tar([_info("n" * (MAX_EXTENDED_HEADER_BYTES + 10))], tarfile.GNU_FORMAT)
    with pytest.raises(BundleRefused) as caught:
        _read_all(data)
    assert caught.value.reason is RefusalReason.EXTENDED_HEADER


@pytest.mark.parametrize(
    "pax",
    [{"size": "3"}, {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}],
    ids=["size", "sparse"],
)
def test_pax_records_that_move_member_boundaries_are_refused(pax: dict[str, str]) -> None:
    with pytest.raises(BundleRefused) as caught:
        _read_all(_tar([_info("a", pax=pax)]))
    assert caught.value.reason is RefusalReason.EXTENDED_HEADER


def test_a_header_with_a_bad_checksum_is_malformed() -> None:
    data = bytearray(_tar([_info("a"), _info("b")], tarfile.USTAR_FORMAT))
    data[2 * BLOCK + 0] ^= 0x01  # the name of the second header, its checksum unchanged
    with pytest.raises(BundleRefused) as caught:
        _read_all(bytes(data))
    assert caught.value.reason is RefusalReason.MALFORMED_BUNDLE


def test_an_archive_without_its_second_zero_block_is_malformed() -> None:
    data = _tar([_info("a")], tarfile.USTAR_FORMAT)
    end = 2 * BLOCK  # header and one data block
    with pytest.raises(BundleRefused) as caught:
        _read_all(data[: end + BLOCK])
    assert caught.value.reason is RefusalReason.MALFORMED_BUNDLE


def test_an_earlier_refusal_keeps_its_reason_over_a_bad_header_later(
    files: dict[str, bytes], trust: TrustStore, tmp_path: Path
) -> None:
    """The guard sees the oversize header first but speaks only when tarfile reaches it."""
    stranger = SigningKey.generate()
    raw = manifest_for(files).canonical_bytes()
    long_name = Member("files/" + "n" * (MAX_EXTENDED_HEADER_BYTES + 100), b"x")
    bundle = write_tar(tmp_path / "b.tar", [*head(raw, [stranger]), long_name])
    with bundle.open("rb") as f, pytest.raises(BundleRefused) as caught:
        verify_bundle(f, trust, NOW)
    assert caught.value.reason is RefusalReason.UNKNOWN_KEY


def test_the_same_header_after_a_valid_signature_is_refused(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    long_name = Member("files/" + "n" * (MAX_EXTENDED_HEADER_BYTES + 100), b"x")
    bundle = write_tar(tmp_path / "b.tar", [*head(raw, [key]), long_name])
    with bundle.open("rb") as f, pytest.raises(BundleRefused) as caught:
        verify_bundle(f, trust, NOW)
    assert caught.value.reason is RefusalReason.EXTENDED_HEADER
