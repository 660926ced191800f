"""Verification of the file members that follow a valid, signed manifest."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ota.errors import BundleRefused
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.verify import verify_bundle
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, Member, file_members, forge, head, manifest_for, write_tar

MODEL = "litert-fp32/model.tflite"
LABELS = "shared/labels.txt"


class RecordingSink:
    """A FileSink that remembers what it was told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.data: dict[str, io.BytesIO] = {}

    def open(self, path: str) -> io.BytesIO:
        self.events.append(("open", path))
        return self.data.setdefault(path, io.BytesIO())

    def commit(self, path: str) -> None:
        self.events.append(("commit", path))

    def discard(self) -> None:
        self.events.append(("discard", ""))


def refusal(bundle: Path, trust: TrustStore, sink: RecordingSink | None = None) -> RefusalReason:
    with bundle.open("rb") as f, pytest.raises(BundleRefused) as caught:
        verify_bundle(f, trust, NOW, sink=sink)
    return caught.value.reason


def signed_with(
    tmp_path: Path, key: SigningKey, listed: dict[str, bytes], members: list[Member]
) -> Path:
    """A bundle whose signed manifest lists `listed` but whose file members are `members`."""
    raw = manifest_for(listed).canonical_bytes()
    return write_tar(tmp_path / "b.tar", [*head(raw, [key]), *members])


def test_sink_sees_each_file_whole_before_its_commit(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    sink = RecordingSink()
    bundle = forge(tmp_path / "b.tar", files, [key])

    with bundle.open("rb") as f:
        verify_bundle(f, trust, NOW, sink=sink)

    assert sink.events == [("open", MODEL), ("commit", MODEL), ("open", LABELS), ("commit", LABELS)]
    assert {path: out.getvalue() for path, out in sink.data.items()} == files


def test_content_swapped_at_the_same_size_is_hash_mismatch(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    swapped = {**files, LABELS: b"evil\n"}
    assert len(swapped[LABELS]) == len(files[LABELS])
    bundle = signed_with(tmp_path, key, files, file_members(swapped))
    sink = RecordingSink()

    assert refusal(bundle, trust, sink) is RefusalReason.HASH_MISMATCH
    assert sink.events == [("open", MODEL), ("commit", MODEL), ("open", LABELS), ("discard", "")]


def test_member_longer_than_listed_is_refused_before_any_byte_is_read(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    longer = {**files, MODEL: files[MODEL] + b"\x00" * 4096}
    bundle = signed_with(tmp_path, key, files, file_members(longer))
    sink = RecordingSink()

    assert refusal(bundle, trust, sink) is RefusalReason.SIZE_MISMATCH
    assert sink.events == [("discard", "")]


def test_member_shorter_than_listed_is_size_mismatch(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    shorter = {**files, LABELS: files[LABELS][:-1]}
    bundle = signed_with(tmp_path, key, files, file_members(shorter))

    assert refusal(bundle, trust) is RefusalReason.SIZE_MISMATCH


@pytest.mark.parametrize("name", ["files/extra.bin", "README", "files/shared", "manifest.json"])
def test_member_not_in_the_manifest_is_unlisted(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path, name: str
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key], extra=[Member(name, b"surprise")])
    sink = RecordingSink()

    assert refusal(bundle, trust, sink) is RefusalReason.UNLISTED_FILE
    assert sink.events[-1] == ("discard", "")


def test_listed_file_absent_from_the_bundle_is_missing(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = signed_with(tmp_path, key, files, file_members({MODEL: files[MODEL]}))
    sink = RecordingSink()

    assert refusal(bundle, trust, sink) is RefusalReason.MISSING_FILE
    assert sink.events == [("open", MODEL), ("commit", MODEL), ("discard", "")]


def test_file_member_given_twice_is_a_duplicate(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    again = Member(f"files/{LABELS}", files[LABELS])
    bundle = forge(tmp_path / "b.tar", files, [key], extra=[again])

    assert refusal(bundle, trust) is RefusalReason.DUPLICATE_FILE


@pytest.mark.parametrize(
    "name",
    [
        "files/../../etc/cron.d/x",
        f"../files/{LABELS}",
        "files/shared/../shared/labels.txt",
        "/etc/cron.d/x",
        f"/files/{LABELS}",
    ],
)
def test_absolute_or_parent_paths_are_unsafe(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path, name: str
) -> None:
    bundle = signed_with(
        tmp_path,
        key,
        files,
        [Member(f"files/{MODEL}", files[MODEL]), Member(name, files[LABELS])],
    )

    assert refusal(bundle, trust) is RefusalReason.UNSAFE_PATH


@pytest.mark.parametrize(
    ("kind", "linkname"),
    [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.SYMTYPE, "../model.tflite"),
        (tarfile.LNKTYPE, f"files/{MODEL}"),
        (tarfile.CHRTYPE, ""),
        (tarfile.BLKTYPE, ""),
        (tarfile.FIFOTYPE, ""),
        (tarfile.DIRTYPE, ""),
        (tarfile.CONTTYPE, ""),
    ],
    ids=["symlink-abs", "symlink-rel", "hardlink", "chardev", "blockdev", "fifo", "dir", "cont"],
)
def test_members_that_are_not_plain_files_are_unsafe(
    files: dict[str, bytes],
    key: SigningKey,
    trust: TrustStore,
    tmp_path: Path,
    kind: bytes,
    linkname: str,
) -> None:
    odd = Member(f"files/{LABELS}", type=kind, linkname=linkname)
    bundle = signed_with(tmp_path, key, files, [Member(f"files/{MODEL}", files[MODEL]), odd])
    sink = RecordingSink()

    assert refusal(bundle, trust, sink) is RefusalReason.UNSAFE_MEMBER
    assert ("open", LABELS) not in sink.events


def test_signature_member_that_is_a_link_is_unsafe(
    files: dict[str, bytes], trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    bundle = write_tar(
        tmp_path / "b.tar",
        [
            Member("manifest.json", raw),
            Member("manifest.sig", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        ],
    )

    assert refusal(bundle, trust) is RefusalReason.UNSAFE_MEMBER


def test_bundle_cut_short_is_malformed(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    sink = RecordingSink()

    assert refusal(bundle, trust, sink) is RefusalReason.MALFORMED_BUNDLE
    assert ("commit", MODEL) not in sink.events
    assert sink.events[-1] == ("discard", "")
