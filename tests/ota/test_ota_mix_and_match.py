"""Two attacks built from validly signed parts: mixing bundles, and changing one after it was
verified."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ota.errors import BundleRefused
from ota.install import SlotStore
from ota.keys import SigningKey
from ota.trust import TrustStore
from ota.verify import verify_bundle
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, file_members, forge, head, manifest_for, write_tar


def test_a_file_swapped_in_from_another_validly_signed_bundle_is_refused(
    tmp_path: Path, key: SigningKey, trust: TrustStore
) -> None:
    old = {"litert-fp32/model.tflite": os.urandom(40_000), "shared/labels.txt": b"face\n"}
    new = {"litert-fp32/model.tflite": os.urandom(40_000), "shared/labels.txt": b"face\n"}
    # both bundles are genuine and signed by the release key
    forge(tmp_path / "old.bundle", old, [key], manifest=manifest_for(old, version=1))
    forge(tmp_path / "new.bundle", new, [key], manifest=manifest_for(new, version=2))
    # the attacker serves the new signed manifest with the old model under the same path
    mixed = write_tar(
        tmp_path / "mixed.bundle",
        [*head(manifest_for(new, version=2).canonical_bytes(), [key]), *file_members(old)],
    )
    with mixed.open("rb") as stream, pytest.raises(BundleRefused) as refused:
        verify_bundle(stream, trust, NOW)
    assert refused.value.reason is RefusalReason.HASH_MISMATCH


def test_a_bundle_changed_on_disk_after_verification_does_not_reach_the_slot(
    tmp_path: Path, key: SigningKey, trust: TrustStore, files: dict[str, bytes]
) -> None:
    path = forge(tmp_path / "b.bundle", files, [key])
    with path.open("rb") as stream:
        verify_bundle(stream, trust, NOW)  # checked once, as an operator would
    data = bytearray(path.read_bytes())
    model = files["litert-fp32/model.tflite"]
    data[data.find(model) + 100] ^= 0xFF  # changed after that check
    path.write_bytes(bytes(data))

    store = SlotStore(tmp_path / "store")
    with pytest.raises(BundleRefused) as refused:
        store.install(path, trust, NOW)
    assert refused.value.reason is RefusalReason.HASH_MISMATCH
    assert store.current() is None


def test_the_installed_copy_is_the_verified_one_whatever_happens_to_the_file_later(
    tmp_path: Path, key: SigningKey, trust: TrustStore, files: dict[str, bytes]
) -> None:
    path = forge(tmp_path / "b.bundle", files, [key])
    store = SlotStore(tmp_path / "store")
    installed = store.install(path, trust, NOW)
    path.write_bytes(b"\0" * path.stat().st_size)  # the download is gone or overwritten
    for entry in installed.manifest.all_files().values():
        on_disk = installed.path_of(entry.path).read_bytes()
        assert hashlib.sha256(on_disk).hexdigest() == entry.sha256
    assert store.current() is not None
    assert store.current().digest == installed.digest  # type: ignore[union-attr]
