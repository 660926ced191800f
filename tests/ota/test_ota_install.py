from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ota.build import BundleSpec, build_bundle
from ota.errors import BundleRefused
from ota.install import Pointer, SlotStore, StoreCorrupt
from ota.keys import SigningKey
from ota.trust import TrustStore
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, file_members, forge, head, manifest_for, write_tar

LABELS = "shared/labels.txt"


def pointer_of(store: SlotStore) -> Pointer:
    pointer = store.pointer()
    assert pointer is not None
    return pointer


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def bundle_v(tmp_path: Path, key: SigningKey, files: dict[str, bytes], version: int) -> Path:
    manifest = manifest_for(files, version=version)
    return forge(tmp_path / f"v{version}.tar", files, [key], manifest=manifest)


def test_build_verify_install_round_trip(
    spec_dir: Path, key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")
    built = build_bundle(spec, spec_dir, [key], tmp_path / "face.bundle", NOW)
    store = SlotStore(tmp_path / "store")

    installed = store.install(built.path, trust, NOW, profile="rpi5")

    assert installed.digest == built.digest
    assert installed.manifest == built.manifest
    assert installed.slot_dir == tmp_path / "store" / "slots" / "a"
    model = installed.path_of(built.manifest.variants[0].model)
    assert model.read_bytes() == (spec_dir / "models" / "face.tflite").read_bytes()
    assert (installed.slot_dir / "manifest.json").read_bytes() == built.manifest.canonical_bytes()
    assert store.current() == installed
    assert store.installed_version("face") == 3
    pointer = json.loads((tmp_path / "store" / "current").read_text())
    assert pointer == {
        "slot": "a",
        "digest": built.digest,
        "name": "face",
        "version": 3,
        "state": "probation",
        "attempts": 0,
    }


def test_empty_store_has_no_current_bundle(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "store")

    assert store.current() is None
    assert store.installed_version("face") is None
    assert store.rollback() is None


def test_installs_alternate_slots_and_raise_the_floor(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")

    first = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    store.commit(first.digest)
    second = store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)
    store.commit(second.digest)
    again = store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)

    assert [b.slot_dir.name for b in (first, second, again)] == ["a", "b", "a"]
    assert store.current() == again
    assert store.installed_version("face") == 4
    assert store.installed_version("person") is None


def test_digest_is_of_the_whole_file(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = bundle_v(tmp_path, key, files, 3)

    installed = SlotStore(tmp_path / "store").install(bundle, trust, NOW)

    assert installed.digest == hashlib.sha256(bundle.read_bytes()).hexdigest()


def test_refused_install_keeps_current_and_leaves_target_slot_empty(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    good = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    current_files = tree(good.slot_dir)
    raw = manifest_for(files, version=4).canonical_bytes()
    swapped = {**files, LABELS: b"evil\n"}
    bad = write_tar(tmp_path / "bad.tar", [*head(raw, [key]), *file_members(swapped)])

    with pytest.raises(BundleRefused) as caught:
        store.install(bad, trust, NOW)

    assert caught.value.reason is RefusalReason.HASH_MISMATCH
    assert store.current() == good
    assert tree(good.slot_dir) == current_files
    assert tree(tmp_path / "store" / "slots" / "b") == set()
    assert store.installed_version("face") == 3


def test_older_version_is_refused_as_rollback(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    store.install(bundle_v(tmp_path, key, files, 5), trust, NOW)

    with pytest.raises(BundleRefused) as caught:
        store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)

    assert caught.value.reason is RefusalReason.ROLLBACK
    assert store.current() is not None
    assert store.current().manifest.version == 5  # type: ignore[union-attr]


def test_incompatible_profile_is_refused_at_install(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    manifest = manifest_for(files, profiles=["rpi5"])
    bundle = forge(tmp_path / "b.tar", files, [key], manifest=manifest)
    store = SlotStore(tmp_path / "store")

    with pytest.raises(BundleRefused) as caught:
        store.install(bundle, trust, NOW, profile="jetson-orin")

    assert caught.value.reason is RefusalReason.INCOMPATIBLE_PROFILE
    assert store.current() is None


def test_rollback_switches_to_the_previous_install_and_back(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    old = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    store.commit(old.digest)
    new = store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)

    assert store.rollback() == old
    assert store.current() == old
    # the floor stays at the newest version ever installed
    assert store.installed_version("face") == 4
    assert store.rollback() == new


def test_rollback_refuses_a_previous_slot_whose_files_changed(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    old = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    store.commit(old.digest)
    new = store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)
    old.path_of(LABELS).write_bytes(b"evil\n")

    assert store.rollback() is None
    assert store.current() == new


def test_rollback_with_only_one_install_does_nothing(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    only = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)

    assert store.rollback() is None
    assert store.current() == only


def test_pointer_to_a_wiped_slot_is_reported_corrupt(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    installed = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    (installed.slot_dir / "install.json").unlink()

    with pytest.raises(StoreCorrupt):
        store.current()


def test_store_reopened_from_disk_sees_the_same_state(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    installed = SlotStore(tmp_path / "store").install(bundle_v(tmp_path, key, files, 3), trust, NOW)

    reopened = SlotStore(tmp_path / "store")

    assert reopened.current() == installed
    assert reopened.installed_version("face") == 3
    leftovers = [p for p in (tmp_path / "store").rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []


def test_a_fresh_install_is_on_probation_until_committed(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    installed = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)

    assert pointer_of(store).state == "probation"
    assert [store.begin_attempt(), store.begin_attempt()] == [1, 2]
    # the count survives a reopen: it is what a crash loop is judged by
    assert pointer_of(SlotStore(tmp_path / "store")).attempts == 2
    store.commit(installed.digest)
    assert pointer_of(store).state == "committed"
    with pytest.raises(StoreCorrupt):
        store.begin_attempt()
    with pytest.raises(StoreCorrupt):
        store.commit("0" * 64)


def test_a_pointer_written_before_probation_existed_reads_as_committed(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    installed = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    old_style = {"slot": "a", "digest": installed.digest, "name": "face", "version": 3}
    (tmp_path / "store" / "current").write_text(json.dumps(old_style))

    assert pointer_of(store).state == "committed"
    assert store.current() == installed


def test_an_install_during_probation_keeps_the_committed_fallback(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    good = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    store.commit(good.digest)
    trial = store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)
    bad_files = {**files, LABELS: b"other\n"}
    bad = forge(tmp_path / "bad.tar", bad_files, [key], manifest=manifest_for(files, version=5))

    with pytest.raises(BundleRefused):
        store.install(bad, trust, NOW)

    # the refused install went into the trial's slot, never into the committed one
    assert trial.slot_dir == tmp_path / "store" / "slots" / "b"
    assert store.current() == good
    assert pointer_of(store).state == "committed"


def test_stage_hook_sees_each_file_then_the_switch_before_the_pointer_moves(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    seen: list[tuple[str, object]] = []

    def hook(stage: str) -> None:
        seen.append((stage, store.pointer()))

    store.install(bundle_v(tmp_path, key, files, 3), trust, NOW, on_stage=hook)

    assert [stage for stage, _ in seen] == ["unpack", "unpack", "switch"]
    assert all(pointer is None for _, pointer in seen)
    assert store.pointer() is not None


def test_rollback_from_probation_lands_committed_and_clear_forgets_the_pointer(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    store = SlotStore(tmp_path / "store")
    old = store.install(bundle_v(tmp_path, key, files, 3), trust, NOW)
    store.commit(old.digest)
    store.install(bundle_v(tmp_path, key, files, 4), trust, NOW)

    assert store.rollback() == old
    assert pointer_of(store).state == "committed"
    store.clear()
    assert store.current() is None
