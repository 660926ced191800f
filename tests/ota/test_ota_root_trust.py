"""Bundles checked against a root document on disk, and the device's root file updated."""

from __future__ import annotations

import ast
import os
from datetime import timedelta
from pathlib import Path

import pytest

import ota.trust
from ota.errors import BundleRefused, RootRefused
from ota.keys import SigningKey
from ota.root import parse_root, trust_store_from_bytes
from ota.trust import TrustStore
from ota.trust_file import apply_root_chain, apply_root_update, load_trust_store, save_trust_store
from ota.verify import verify_bundle
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, forge, manifest_for
from tests.ota.test_ota_root import DAY, document, keys, signed_part

FILES = {"litert-fp32/model.tflite": os.urandom(4000), "shared/labels.txt": b"face\n"}


def bundle_reason(path: Path, trust: TrustStore, when=NOW) -> RefusalReason:
    with path.open("rb") as stream, pytest.raises(BundleRefused) as refused:
        verify_bundle(stream, trust, when)
    return refused.value.reason


@pytest.fixture
def root_keys() -> list[SigningKey]:
    return keys(2)


@pytest.fixture
def release() -> list[SigningKey]:
    return keys(2)


@pytest.fixture
def root_file(tmp_path: Path, root_keys, release) -> Path:
    path = tmp_path / "trust.json"
    signed = signed_part(1, root_keys, release, expires=NOW + 30 * DAY)
    path.write_bytes(document(signed, root_keys[:1]))
    return path


def test_trust_store_load_reads_a_root_document(root_file: Path, release, tmp_path) -> None:
    trust = load_trust_store(root_file)
    bundle = forge(tmp_path / "b.tar", FILES, release[:1])

    with bundle.open("rb") as stream:
        assert verify_bundle(stream, trust, NOW).name == "face"
    assert trust.root_version == 1


def test_a_root_whose_signature_fails_cannot_be_loaded(root_file: Path) -> None:
    root_file.write_bytes(root_file.read_bytes().replace(b'"threshold": 1', b'"threshold": 2', 1))

    with pytest.raises(RootRefused) as refused:
        load_trust_store(root_file)
    assert refused.value.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET


def test_bundle_signed_by_a_key_not_in_the_release_role_is_unknown(
    root_file: Path, root_keys, tmp_path
) -> None:
    # a root key is trusted for roots, never for bundles
    bundle = forge(tmp_path / "b.tar", FILES, root_keys[:1])

    assert bundle_reason(bundle, load_trust_store(root_file)) is RefusalReason.UNKNOWN_KEY


def test_expired_manifest_under_a_valid_root_is_expired(root_file: Path, release, tmp_path):
    old = manifest_for(FILES, created=NOW - 10 * DAY, lifetime=2 * DAY)
    bundle = forge(tmp_path / "b.tar", FILES, release[:1], manifest=old)

    assert bundle_reason(bundle, load_trust_store(root_file)) is RefusalReason.EXPIRED


def test_an_expired_root_refuses_good_bundles_as_expired(root_file: Path, release, tmp_path):
    bundle = forge(tmp_path / "b.tar", FILES, release[:1], manifest=manifest_for(FILES))
    trust = load_trust_store(root_file)
    later = NOW + 31 * DAY

    assert bundle_reason(bundle, trust, later) is RefusalReason.EXPIRED
    with bundle.open("rb") as stream:
        assert verify_bundle(stream, trust, NOW + 30 * DAY + timedelta(minutes=4)).version == 3


def test_revoking_a_release_key_refuses_its_bundles(root_file, root_keys, release, tmp_path):
    bundle = forge(tmp_path / "b.tar", FILES, release[:1])
    signed = signed_part(2, root_keys, release, expires=NOW + 30 * DAY, revoked=[release[0].keyid])

    assert apply_root_update(root_file, document(signed, root_keys[:1]), NOW) == 2

    trust = load_trust_store(root_file)
    assert bundle_reason(bundle, trust) is RefusalReason.REVOKED_KEY
    other = forge(tmp_path / "c.tar", FILES, release[1:])
    with other.open("rb") as stream:
        assert verify_bundle(stream, trust, NOW).name == "face"


def test_a_refused_update_leaves_the_root_file_untouched(root_file: Path, root_keys, release):
    before = root_file.read_bytes()
    skipped = document(signed_part(3, root_keys, release), root_keys)

    with pytest.raises(RootRefused) as refused:
        apply_root_update(root_file, skipped, NOW)

    assert refused.value.reason is RefusalReason.ROOT_VERSION
    assert root_file.read_bytes() == before
    assert [p.name for p in root_file.parent.iterdir()] == ["trust.json"]


def test_resending_the_current_root_changes_nothing(root_file: Path) -> None:
    data = root_file.read_bytes()
    stat_before = root_file.stat()

    assert apply_root_update(root_file, data, NOW) == 1
    assert root_file.stat().st_mtime_ns == stat_before.st_mtime_ns


def test_a_plain_trust_store_accepts_no_root_update(tmp_path, root_keys, release) -> None:
    path = tmp_path / "trust.json"
    save_trust_store(TrustStore.from_keys([release[0].public_key()]), path)
    new_root = document(signed_part(2, root_keys, release), root_keys)

    with pytest.raises(RootRefused) as refused:
        apply_root_update(path, new_root, NOW)
    assert refused.value.reason is RefusalReason.NO_ROOT


def test_the_written_root_is_the_exact_bytes_received(root_file, root_keys, release) -> None:
    new = keys(1)
    data = document(signed_part(2, new, release), [root_keys[0], new[0]])

    apply_root_update(root_file, data, NOW)

    assert root_file.read_bytes() == data
    assert parse_root(root_file.read_bytes()).signed.roles.root.keyids == (new[0].keyid,)


def test_a_chain_keeps_the_steps_made_before_a_refusal(root_file: Path, root_keys, release):
    v2 = document(signed_part(2, root_keys, release), root_keys[:1])
    v4 = document(signed_part(4, root_keys, release), root_keys[:1])

    with pytest.raises(RootRefused) as refused:
        apply_root_chain(root_file, [v2, v4], NOW)

    assert refused.value.reason is RefusalReason.ROOT_VERSION
    assert root_file.read_bytes() == v2
    # resent with older versions first, which are skipped, never stepped back to
    assert apply_root_chain(root_file, [root_file.read_bytes(), v2], NOW) == 2


def test_the_store_comes_from_the_bytes_alone(root_file: Path, release) -> None:
    # the pure core: what the file holds, no file needed
    trust = trust_store_from_bytes(root_file.read_bytes())

    assert trust == load_trust_store(root_file)
    assert trust.root_version == 1
    assert set(trust.release_keys) == {k.keyid for k in release}


def test_the_trust_store_module_does_no_file_io_and_imports_no_root() -> None:
    # the store is a pure value; reading, writing and root updates live in ota.trust_file
    source = Path(ota.trust.__file__).read_text()
    imported = {
        node.module
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "ota.root" not in imported and "ota.atomic" not in imported
    assert "pathlib" not in imported
