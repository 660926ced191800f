"""`edgefleet keys`: root and release keys and the signed root document devices trust.

A keys folder holds `root-N.pem` and `release-N.pem` (0600), `root.json` (the current root),
`root.V.json` for every version made, and `trust.json`, a copy of the current root to put on
devices. Each change makes the next root version, checked with `ota.root.update_root` before
it is written, so the folder never holds a root a device would refuse.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ota.atomic import write_atomic
from ota.errors import RootRefused
from ota.keys import PublicKey, SigningKey
from ota.root import Root, RootSigned, parse_root, root_signed, sign_root, update_root

ROOT_FILE = "root.json"
DEVICE_FILE = "trust.json"
_PEM_RE = re.compile(r"^(root|release)-(\d+)\.pem$")


class KeysError(Exception):
    """A keys command that cannot go ahead, with what to do about it."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _keyring(folder: Path) -> dict[str, SigningKey]:
    """Every private key in the folder, by keyid. Raises OSError, ValueError."""
    ring: dict[str, SigningKey] = {}
    for path in sorted(folder.glob("*.pem")):
        if _PEM_RE.match(path.name):
            key = SigningKey.load(path)
            ring[key.keyid] = key
    return ring


def _new_keys(folder: Path, role: str, count: int) -> list[SigningKey]:
    """Generate `count` keys saved as the next free `<role>-N.pem`. Raises OSError."""
    start = _next_index(folder, role)
    out = []
    for index in range(start, start + count):
        key = SigningKey.generate()
        path = folder / f"{role}-{index}.pem"
        key.save(path)
        out.append(key)
        print(f"{role} key {key.keyid[:16]}… → {path} (0600)")
    return out


def _next_index(folder: Path, role: str) -> int:
    taken = [
        int(m.group(2))
        for p in folder.glob(f"{role}-*.pem")
        if (m := _PEM_RE.match(p.name)) and m.group(1) == role
    ]
    return max(taken, default=0) + 1


def _write_root(folder: Path, data: bytes, version: int) -> None:
    # the numbered copy first, so root.json never names a version that has no copy
    write_atomic(folder / f"root.{version}.json", data)
    write_atomic(folder / ROOT_FILE, data)
    write_atomic(folder / DEVICE_FILE, data)
    print(f"root version {version} → {folder / ROOT_FILE} (devices: {folder / DEVICE_FILE})")


def _current(folder: Path) -> Root:
    try:
        return parse_root((folder / ROOT_FILE).read_bytes())
    except OSError as exc:
        raise KeysError(f"no root document in {folder}; run `edgefleet keys init`") from exc


def _signers(root: Root, ring: dict[str, SigningKey]) -> list[SigningKey]:
    role = root.signed.roles.root
    have = [ring[k] for k in role.keyids if k in ring and k not in root.signed.revoked]
    if len(have) < role.threshold:
        raise KeysError(f"{len(have)} of the {role.threshold} root keys needed are in this folder")
    return have


def _publish(folder: Path, current: Root, signed: RootSigned, extra: Sequence[SigningKey]) -> None:
    ring = _keyring(folder)
    data = sign_root(signed, [*_signers(current, ring), *extra])
    new = update_root(current, data, _now())
    _write_root(folder, new.raw, new.version)


def _public(root: Root, keyids: Sequence[str]) -> list[PublicKey]:
    return [PublicKey.from_hex(root.signed.keys[k]) for k in keyids]


def _expiry(root: Root, days: int | None) -> datetime:
    return root.expires if days is None else _now() + timedelta(days=days)


def cmd_keys_init(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in (folder / "root-1.pem", folder / "release-1.pem") if p.exists()]
    if existing and not args.force:
        print(f"edgefleet: {existing[0]} exists; use --force to replace it", file=sys.stderr)
        return 1
    if args.force:
        for old in [*folder.glob("root*.json"), *folder.glob("*.pem")]:
            if _PEM_RE.match(old.name) or old.name.startswith("root"):
                old.unlink()
    root_keys = _new_keys(folder, "root", args.root_keys)
    release_keys = _new_keys(folder, "release", args.release_keys)
    signed = root_signed(
        version=1,
        expires=_now() + timedelta(days=args.expires_days),
        root_keys=[k.public_key() for k in root_keys],
        root_threshold=args.root_threshold,
        release_keys=[k.public_key() for k in release_keys],
        release_threshold=args.release_threshold,
    )
    root = parse_root(sign_root(signed, root_keys))
    _write_root(folder, root.raw, root.version)
    print(
        f"thresholds: root {args.root_threshold} of {args.root_keys}, "
        f"release {args.release_threshold} of {args.release_keys}; copy {DEVICE_FILE} to devices"
    )
    return 0


def cmd_keys_rotate_root(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    role = current.signed.roles.root
    count = args.new_root_keys or len(role.keyids)
    threshold = args.root_threshold or min(role.threshold, count)
    ring = _keyring(folder)
    _signers(current, ring)  # fail before making keys that would be left unused
    new_keys = _new_keys(folder, "root", count)
    release = current.signed.roles.release
    signed = root_signed(
        version=current.version + 1,
        expires=_expiry(current, args.expires_days),
        root_keys=[k.public_key() for k in new_keys],
        root_threshold=threshold,
        release_keys=_public(current, release.keyids),
        release_threshold=release.threshold,
        revoked=current.signed.revoked,
    )
    _publish(folder, current, signed, new_keys)
    print("the old root keys no longer sign anything; move their .pem files offline")
    return 0


def cmd_keys_add_release(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    _signers(current, _keyring(folder))
    added = _new_keys(folder, "release", args.count)
    release = current.signed.roles.release
    root_role = current.signed.roles.root
    signed = root_signed(
        version=current.version + 1,
        expires=_expiry(current, args.expires_days),
        root_keys=_public(current, root_role.keyids),
        root_threshold=root_role.threshold,
        release_keys=[*_public(current, release.keyids), *(k.public_key() for k in added)],
        release_threshold=args.release_threshold or release.threshold,
        revoked=current.signed.revoked,
    )
    _publish(folder, current, signed, [])
    return 0


def cmd_keys_revoke_release(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    release = current.signed.roles.release
    matches = [k for k in release.keyids if k.startswith(args.keyid.lower())]
    if len(args.keyid) < 8 or len(matches) != 1:
        raise KeysError(f"{args.keyid!r} names {len(matches)} release keys; give 8+ hex digits")
    revoked = {*current.signed.revoked, matches[0]}
    threshold = args.release_threshold or release.threshold
    usable = [k for k in release.keyids if k not in revoked]
    if len(usable) < threshold:
        raise KeysError(
            f"{len(usable)} release keys would remain for a threshold of {threshold}; "
            "run `edgefleet keys add-release` first"
        )
    root_role = current.signed.roles.root
    signed = root_signed(
        version=current.version + 1,
        expires=_expiry(current, args.expires_days),
        root_keys=_public(current, root_role.keyids),
        root_threshold=root_role.threshold,
        release_keys=_public(current, release.keyids),
        release_threshold=threshold,
        revoked=revoked,
    )
    _publish(folder, current, signed, [])
    print(f"revoked release key {matches[0][:16]}…; push the new root to every device")
    return 0


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (KeysError, RootRefused, ValidationError, ValueError, OSError) as exc:
            print(f"edgefleet: {exc}", file=sys.stderr)
            return 1

    return run


def add_keys_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="root and release keys, the signed root")
    sub = parser.add_subparsers(dest="keys_command", required=True)

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--dir", type=Path, default=Path("keys"))
        p.set_defaults(func=_guarded(func))
        return p

    init = command("init", "make root and release keys and root version 1", cmd_keys_init)
    init.add_argument("--root-keys", type=int, default=1)
    init.add_argument("--root-threshold", type=int, default=1)
    init.add_argument("--release-keys", "--count", type=int, default=1)
    init.add_argument("--release-threshold", "--threshold", type=int, default=1)
    init.add_argument("--expires-days", type=int, default=365)
    init.add_argument("--force", action="store_true", help="replace existing keys and roots")
    rotate = command("rotate-root", "new root keys, signed by old and new", cmd_keys_rotate_root)
    rotate.add_argument("--new-root-keys", type=int, default=None)
    rotate.add_argument("--root-threshold", type=int, default=None)
    add = command("add-release", "add release keys in a new root version", cmd_keys_add_release)
    add.add_argument("--count", type=int, default=1)
    revoke = command("revoke-release", "revoke a release key", cmd_keys_revoke_release)
    revoke.add_argument("keyid", help="the key's id, or 8+ leading hex digits of it")
    for p in (add, revoke):
        p.add_argument("--release-threshold", type=int, default=None)
    for p in (rotate, add, revoke):
        p.add_argument("--expires-days", type=int, default=None, help="default: keep expiry")
