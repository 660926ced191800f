"""The anti-rollback floor across bundle names: the highest `release` committed on the device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ota.errors import BundleRefused
from ota.install import SlotStore
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, forge, manifest_for

FILES = {"litert-fp32/model.tflite": os.urandom(3000), "shared/labels.txt": b"face\n"}


def bundle(tmp_path: Path, key, name: str, version: int, release: int) -> Path:
    manifest = manifest_for(FILES, name=name, version=version).model_copy(
        update={"release": release}
    )
    return forge(tmp_path / f"{name}-{version}-{release}.tar", FILES, [key], manifest=manifest)


def committed(store: SlotStore, path: Path, trust) -> str:
    installed = store.install(path, trust, NOW)
    store.commit(installed.digest)
    return installed.digest


def test_the_floor_rises_when_a_bundle_is_committed_not_when_installed(tmp_path, key, trust):
    store = SlotStore(tmp_path / "store")
    installed = store.install(bundle(tmp_path, key, "face", 1, 4), trust, NOW)
    assert store.release_floor() == 0
    store.commit(installed.digest)
    assert store.release_floor() == 4


def test_a_bundle_of_another_name_below_the_floor_is_refused(tmp_path, key, trust):
    store = SlotStore(tmp_path / "store")
    committed(store, bundle(tmp_path, key, "face", 1, 5), trust)
    with pytest.raises(BundleRefused) as refused:
        store.install(bundle(tmp_path, key, "person", 9, 4), trust, NOW)
    assert refused.value.reason is RefusalReason.ROLLBACK
    current = store.current()
    assert current is not None and current.manifest.name == "face"


def test_a_manifest_without_a_release_counts_as_zero(tmp_path, key, trust):
    store = SlotStore(tmp_path / "store")
    committed(store, bundle(tmp_path, key, "face", 1, 0), trust)
    committed(store, bundle(tmp_path, key, "person", 1, 0), trust)
    committed(store, bundle(tmp_path, key, "face", 2, 1), trust)
    with pytest.raises(BundleRefused):
        store.install(forge(tmp_path / "old.tar", FILES, [key]), trust, NOW)


def test_rollback_within_one_release_works_and_below_the_floor_is_refused(tmp_path, key, trust):
    store = SlotStore(tmp_path / "store")
    committed(store, bundle(tmp_path, key, "face", 1, 2), trust)
    committed(store, bundle(tmp_path, key, "face", 2, 2), trust)
    assert store.rollback_refusal() is None
    back = store.rollback()
    assert back is not None and back.manifest.version == 1
    committed(store, bundle(tmp_path, key, "face", 3, 3), trust)
    pointer = (tmp_path / "store" / "current").read_bytes()
    assert "below this device's floor 3" in (store.rollback_refusal() or "")
    assert store.rollback() is None
    assert (tmp_path / "store" / "current").read_bytes() == pointer


def test_a_failed_probation_still_falls_back_to_the_last_committed(tmp_path, key, trust):
    store = SlotStore(tmp_path / "store")
    committed(store, bundle(tmp_path, key, "face", 1, 2), trust)
    store.install(bundle(tmp_path, key, "face", 2, 3), trust, NOW)  # on probation
    assert store.release_floor() == 2
    back = store.rollback()
    assert back is not None and back.manifest.version == 1
