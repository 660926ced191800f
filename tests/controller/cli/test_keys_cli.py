"""`edgefleet keys` and `edgefleet bundle inspect`, checked by what a device makes of the output."""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from controller.cli.main import main
from ota.errors import BundleRefused, RootRefused
from ota.keys import SigningKey
from ota.root import parse_root
from ota.trust_file import apply_root_update, load_trust_store
from ota.verify import verify_bundle
from protocol.events import RefusalReason
from tests.ota.ota_forge import forge, manifest_for

FILES = {"litert-fp32/model.tflite": os.urandom(3000), "shared/labels.txt": b"face\n"}


def now() -> datetime:
    return datetime.now(timezone.utc)


def bundle(path: Path, *keys: SigningKey) -> Path:
    return forge(path, FILES, keys, manifest=manifest_for(FILES, created=now()))


def keys_cmd(folder: Path, *args: str) -> int:
    return main(["keys", args[0], "--dir", str(folder), *args[1:]])


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    assert keys_cmd(path, "init", "--root-keys", "2", "--root-threshold", "2") == 0
    return path


@pytest.fixture
def device(tmp_path: Path, folder: Path) -> Path:
    """A device's trust file, installed from `keys init` by hand."""
    path = tmp_path / "device" / "trust.json"
    path.parent.mkdir()
    shutil.copy(folder / "trust.json", path)
    return path


def test_init_keeps_each_role_in_its_own_folder_0600_beside_a_self_signed_root(folder: Path):
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    assert names == [
        "command/command-1.pem",
        "command/command-1.pub",
        "release/release-1.pem",
        "release/release-1.pub",
        "root.1.json",
        "root.json",
        "root/root-1.pem",
        "root/root-1.pub",
        "root/root-2.pem",
        "root/root-2.pub",
        "trust.json",
    ]
    assert not list(folder.glob("*.pem")), "no private key beside the public root"
    for pem in folder.rglob("*.pem"):
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    for role in ("root", "release", "command"):
        assert stat.S_IMODE((folder / role).stat().st_mode) == 0o700
    root = parse_root((folder / "root.json").read_bytes())
    assert root.version == 1 and root.signed.roles.root.threshold == 2
    trust = load_trust_store(folder / "trust.json")
    command = SigningKey.load(folder / "command" / "command-1.pem")
    assert trust.root_version == 1 and list(trust.command_keys) == [command.keyid]


def test_rotate_root_twice_gives_a_chain_a_v1_device_follows(folder: Path, device: Path):
    assert keys_cmd(folder, "rotate-root", "--new-root-keys", "3") == 0
    assert keys_cmd(folder, "rotate-root") == 0

    v3 = (folder / "root.3.json").read_bytes()
    with pytest.raises(RootRefused) as skipped:
        apply_root_update(device, v3, now())
    # v3 is signed by v2's root keys, which a v1 device does not know yet: it must walk the chain
    assert skipped.value.reason is RefusalReason.ROOT_THRESHOLD_NOT_MET
    assert apply_root_update(device, (folder / "root.2.json").read_bytes(), now()) == 2
    assert apply_root_update(device, v3, now()) == 3
    roots = [parse_root((folder / f"root.{n}.json").read_bytes()) for n in (1, 2, 3)]
    root_ids = [set(r.signed.roles.root.keyids) for r in roots]
    assert len(root_ids[1]) == 3 and not root_ids[0] & root_ids[1] and not root_ids[1] & root_ids[2]


def test_rotate_root_without_the_old_root_keys_fails(folder: Path, capsys) -> None:
    (folder / "root" / "root-2.pem").unlink()

    assert keys_cmd(folder, "rotate-root") == 1
    assert "1 of the 2 root keys" in capsys.readouterr().err
    assert parse_root((folder / "root.json").read_bytes()).version == 1


def test_revoke_release_refuses_bundles_signed_by_that_key(folder, device, tmp_path) -> None:
    old_key = SigningKey.load(folder / "release" / "release-1.pem")
    assert keys_cmd(folder, "revoke-release", old_key.keyid[:12]) == 1, "the only release key"
    assert keys_cmd(folder, "add-release") == 0
    assert keys_cmd(folder, "revoke-release", old_key.keyid[:12]) == 0
    new_key = SigningKey.load(folder / "release" / "release-2.pem")
    old_bundle = bundle(tmp_path / "old.tar", old_key)

    for version in (2, 3):
        apply_root_update(device, (folder / f"root.{version}.json").read_bytes(), now())
    trust = load_trust_store(device)

    with old_bundle.open("rb") as stream, pytest.raises(BundleRefused) as refused:
        verify_bundle(stream, trust, now())
    assert refused.value.reason is RefusalReason.REVOKED_KEY
    with bundle(tmp_path / "new.tar", new_key).open("rb") as stream:
        assert verify_bundle(stream, trust, now()).name == "face"


def test_bundle_inspect_shows_the_manifest_and_the_verdict(folder: Path, tmp_path, capsys):
    key = SigningKey.load(folder / "release" / "release-1.pem")
    path = bundle(tmp_path / "face.tar", key)

    assert main(["bundle", "inspect", str(path), "--trust", str(folder / "root.json")]) == 0
    out = capsys.readouterr().out
    assert "face@3" in out and "variant   litert/fp32" in out
    assert f"signed by {key.keyid}" in out and "verdict   ok" in out
    assert "shared/labels.txt  5 bytes" in out


def test_bundle_inspect_reports_the_refusal_reason_as_json(folder: Path, tmp_path, capsys):
    stranger = SigningKey.generate()
    path = bundle(tmp_path / "face.tar", stranger)
    args = [
        "--output",
        "json",
        "bundle",
        "inspect",
        str(path),
        "--trust",
        str(folder / "trust.json"),
    ]

    assert main(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"]["status"] == "refused"
    assert report["verdict"]["reason"] == "unknown_key"
    assert report["signatures"] == [stranger.keyid]
    assert {f["path"] for f in report["files"]} == set(FILES)


def test_bundle_inspect_of_a_non_bundle_says_why(tmp_path: Path, capsys) -> None:
    path = tmp_path / "junk.tar"
    path.write_bytes(b"not a tar at all" * 100)

    assert main(["bundle", "inspect", str(path)]) == 2
    assert "junk.tar" in capsys.readouterr().err


def test_bundle_inspect_shows_an_unsigned_bundle_and_refuses_it(folder, tmp_path, capsys):
    from tests.ota.ota_forge import Member, file_members, write_tar

    raw = manifest_for(FILES, created=now()).canonical_bytes()
    path = write_tar(tmp_path / "u.tar", [Member("manifest.json", raw), *file_members(FILES)])

    assert main(["bundle", "inspect", str(path), "--trust", str(folder / "root.json")]) == 1
    out = capsys.readouterr().out
    assert "face@3" in out and "signed by" not in out and "verdict   refused unsigned" in out


def test_every_root_change_keeps_the_command_role(folder: Path) -> None:
    assert keys_cmd(folder, "add-release") == 0
    assert keys_cmd(folder, "rotate-root") == 0
    first = parse_root((folder / "root.1.json").read_bytes()).signed.roles.command
    last = parse_root((folder / "root.json").read_bytes()).signed.roles.command
    assert first is not None and last == first


def test_a_new_command_key_is_listed_beside_the_old_then_the_old_removed(folder, device):
    old = SigningKey.load(folder / "command" / "command-1.pem")
    assert keys_cmd(folder, "add-command") == 0
    new = SigningKey.load(folder / "command" / "command-2.pem")
    assert apply_root_update(device, (folder / "root.2.json").read_bytes(), now()) == 2
    assert set(load_trust_store(device).command_keys) == {old.keyid, new.keyid}

    assert keys_cmd(folder, "remove-command", old.keyid[:10]) == 0
    assert apply_root_update(device, (folder / "root.3.json").read_bytes(), now()) == 3
    assert list(load_trust_store(device).command_keys) == [new.keyid]
    assert keys_cmd(folder, "remove-command", new.keyid[:10]) == 1, "the last command key"


def test_encrypted_keys_need_the_passphrase(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "correct horse")
    folder = tmp_path / "sealed"
    assert keys_cmd(folder, "init", "--encrypt") == 0
    pem = folder / "root" / "root-1.pem"
    assert b"ENCRYPTED PRIVATE KEY" in pem.read_bytes()
    assert b"ENCRYPTED" not in (folder / "command" / "command-1.pem").read_bytes()
    assert keys_cmd(folder, "add-release") == 0  # opens the root key with the passphrase

    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "wrong")
    assert keys_cmd(folder, "add-release") == 1
    assert parse_root((folder / "root.json").read_bytes()).version == 2
    monkeypatch.delenv("EDGEFLEET_KEY_PASSPHRASE")
    capsys.readouterr()
    assert keys_cmd(folder, "add-release") == 1
    assert "EDGEFLEET_KEY_PASSPHRASE" in capsys.readouterr().err


def test_list_shows_each_role_and_warns_before_the_root_expires(tmp_path, capsys) -> None:
    folder = tmp_path / "short"
    assert keys_cmd(folder, "init", "--expires-days", "10") == 0
    assert "warning: root version 1 expires in" in capsys.readouterr().err
    assert keys_cmd(folder, "list") == 0
    captured = capsys.readouterr()
    assert "command: 1 of 1" in captured.out and "release: 1 of 1" in captured.out
    assert str(folder / "command" / "command-1.pem") in captured.out
    assert "expires in" in captured.err
    assert keys_cmd(folder, "list", "--warn-days", "5") == 0
    assert "warning" not in capsys.readouterr().err


def test_a_folder_from_before_the_split_is_still_read(tmp_path) -> None:
    folder = tmp_path / "flat"
    assert keys_cmd(folder, "init") == 0
    for pem in folder.rglob("*-*.pem"):
        pem.rename(folder / pem.name)
    assert keys_cmd(folder, "add-release") == 0
    assert parse_root((folder / "root.json").read_bytes()).version == 2
