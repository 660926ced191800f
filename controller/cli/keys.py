"""`edgefleet keys`: root, release and command keys and the signed root document devices trust.

A keys folder keeps each role's private keys in a folder of its own, so each can live where its
use needs it: `root/root-N.pem` offline, `release/release-N.pem` on the release workstation,
`command/command-N.pem` on the controller (its only private key). Keys are 0600 and, with
`--encrypt`, encrypted PEMs (passphrase from $EDGEFLEET_KEY_PASSPHRASE or a prompt). Beside the
folders: `root.json` (the current root), `root.V.json` for every version made, and
`trust.json`, a copy of the current root to put on devices and the controller. Each change
makes the next root version, checked with `ota.root.update_root` before it is written, so the
folder never holds a root a device would refuse. A folder from before the split (all `.pem`
files at the top) is still read.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.auth.signing import PASSPHRASE_ENV, ROOT_EXPIRY_WARNING_DAYS, root_expiry_warning
from controller.cli.client import EXIT_OK, EXIT_REFUSED
from ota.atomic import write_atomic
from ota.errors import RootRefused
from ota.keys import PublicKey, SigningKey, is_encrypted_pem
from ota.root import Root, RootSigned, parse_root, root_signed, sign_root, update_root

ROOT_FILE = "root.json"
DEVICE_FILE = "trust.json"
ROLES = ("root", "release", "command")
_PEM_RE = re.compile(r"^(root|release|command)-(\d+)\.pem$")


class KeysError(Exception):
    """A keys command that cannot go ahead, with what to do about it."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def read_passphrase(path: Path, *, confirm: bool = False) -> bytes:
    """The passphrase for `path`: $EDGEFLEET_KEY_PASSPHRASE, else asked on the terminal.

    Raises KeysError when neither is available."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode("utf-8")
    if not sys.stdin.isatty():
        raise KeysError(f"{path} needs a passphrase: set {PASSPHRASE_ENV} or run on a terminal")
    first = getpass.getpass(f"passphrase for {path}: ")
    if confirm and getpass.getpass("again: ") != first:
        raise KeysError("the passphrases differ")
    if not first:
        raise KeysError("an empty passphrase would leave the key unencrypted")
    return first.encode("utf-8")


def load_key(path: Path) -> SigningKey:
    """A private key file, asking for its passphrase when it is encrypted.
    Raises KeysError, OSError, ValueError."""
    passphrase = read_passphrase(path) if is_encrypted_pem(path) else None
    return SigningKey.load(path, passphrase)


def _pem_files(folder: Path) -> list[Path]:
    found = [*folder.glob("*.pem")]
    for role in ROLES:
        found.extend((folder / role).glob("*.pem"))
    return sorted(p for p in found if _PEM_RE.match(p.name))


def _keyring(folder: Path, keyids: Sequence[str]) -> dict[str, SigningKey]:
    """The private keys in the folder among `keyids`, by keyid; a key whose public half says it
    is not wanted is not opened, so no passphrase is asked for it. Raises KeysError, OSError,
    ValueError."""
    ring: dict[str, SigningKey] = {}
    for path in _pem_files(folder):
        public = path.with_suffix(".pub")
        if public.exists() and PublicKey.from_hex(public.read_text().strip()).keyid not in keyids:
            continue
        key = load_key(path)
        if key.keyid in keyids:
            ring[key.keyid] = key
    return ring


def _new_keys(folder: Path, role: str, count: int, encrypt: bool = False) -> list[SigningKey]:
    """Generate `count` keys saved as the next free `<role>/<role>-N.pem`. Raises OSError,
    KeysError."""
    where = folder / role
    where.mkdir(parents=True, exist_ok=True)
    os.chmod(where, 0o700)
    start = _next_index(folder, role)
    out = []
    for index in range(start, start + count):
        key = SigningKey.generate()
        path = where / f"{role}-{index}.pem"
        passphrase = read_passphrase(path, confirm=True) if encrypt else None
        key.save(path, passphrase)
        # the public half beside it, so a listing never needs the passphrase
        write_atomic(path.with_suffix(".pub"), (key.public_key().to_hex() + "\n").encode())
        out.append(key)
        sealed = "encrypted, 0600" if passphrase else "0600"
        print(f"{role} key {key.keyid[:16]}… → {path} ({sealed})")
    return out


def _next_index(folder: Path, role: str) -> int:
    taken = [
        int(m.group(2))
        for p in _pem_files(folder)
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


def _signers(folder: Path, root: Root) -> list[SigningKey]:
    role = root.signed.roles.root
    usable = [k for k in role.keyids if k not in root.signed.revoked]
    ring = _keyring(folder, usable)
    have = [ring[k] for k in usable if k in ring]
    if len(have) < role.threshold:
        raise KeysError(f"{len(have)} of the {role.threshold} root keys needed are in this folder")
    return have


def _publish(folder: Path, current: Root, signed: RootSigned, extra: Sequence[SigningKey]) -> None:
    data = sign_root(signed, [*_signers(folder, current), *extra])
    new = update_root(current, data, _now())
    _write_root(folder, new.raw, new.version)


def _public(root: Root, keyids: Sequence[str]) -> list[PublicKey]:
    return [PublicKey.from_hex(root.signed.keys[k]) for k in keyids]


def _next_root(current: Root, days: int | None, **changes: Any) -> RootSigned:
    """The next version of `current` with `changes` (root_signed's arguments) applied."""
    roles = current.signed.roles
    command = roles.command
    values: dict[str, Any] = {
        "version": current.version + 1,
        "expires": current.expires if days is None else _now() + timedelta(days=days),
        "root_keys": _public(current, roles.root.keyids),
        "root_threshold": roles.root.threshold,
        "release_keys": _public(current, roles.release.keyids),
        "release_threshold": roles.release.threshold,
        "revoked": current.signed.revoked,
        "command_keys": _public(current, command.keyids) if command else [],
        "command_threshold": command.threshold if command else 1,
    }
    values.update(changes)
    return root_signed(**values)


def _warn_expiry(folder: Path, days: int = ROOT_EXPIRY_WARNING_DAYS) -> None:
    warning = root_expiry_warning(folder / ROOT_FILE, days=days)
    if warning is not None:
        print(f"edgefleet: warning: {warning}", file=sys.stderr)


def cmd_keys_init(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    folder.mkdir(parents=True, exist_ok=True)
    existing = _pem_files(folder)
    if existing and not args.force:
        print(f"edgefleet: {existing[0]} exists; use --force to replace it", file=sys.stderr)
        return EXIT_REFUSED
    if args.force:
        for old in [*folder.glob("root*.json"), *existing, *_public_files(folder)]:
            old.unlink()
    root_keys = _new_keys(folder, "root", args.root_keys, args.encrypt)
    release_keys = _new_keys(folder, "release", args.release_keys, args.encrypt)
    # the controller loads its command key at start: encrypted only when asked for by itself
    command_keys = _new_keys(folder, "command", args.command_keys, args.encrypt_command)
    signed = root_signed(
        version=1,
        expires=_now() + timedelta(days=args.expires_days),
        root_keys=[k.public_key() for k in root_keys],
        root_threshold=args.root_threshold,
        release_keys=[k.public_key() for k in release_keys],
        release_threshold=args.release_threshold,
        command_keys=[k.public_key() for k in command_keys],
        command_threshold=args.command_threshold,
    )
    root = parse_root(sign_root(signed, root_keys))
    _write_root(folder, root.raw, root.version)
    print(
        f"thresholds: root {args.root_threshold} of {args.root_keys}, "
        f"release {args.release_threshold} of {args.release_keys}, "
        f"command {args.command_threshold} of {args.command_keys}; copy {DEVICE_FILE} to "
        f"devices and the controller, and give the controller {folder / 'command'}/ only"
    )
    return EXIT_OK


def _public_files(folder: Path) -> list[Path]:
    return [p for role in ROLES for p in (folder / role).glob(f"{role}-*.pub")]


def cmd_keys_rotate_root(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    role = current.signed.roles.root
    count = args.new_root_keys or len(role.keyids)
    threshold = args.root_threshold or min(role.threshold, count)
    _signers(folder, current)  # fail before making keys that would be left unused
    new_keys = _new_keys(folder, "root", count, args.encrypt)
    signed = _next_root(
        current,
        args.expires_days,
        root_keys=[k.public_key() for k in new_keys],
        root_threshold=threshold,
    )
    _publish(folder, current, signed, new_keys)
    print("the old root keys no longer sign anything; move their .pem files offline")
    return EXIT_OK


def cmd_keys_add_release(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    _signers(folder, current)
    added = _new_keys(folder, "release", args.count, args.encrypt)
    release = current.signed.roles.release
    signed = _next_root(
        current,
        args.expires_days,
        release_keys=[*_public(current, release.keyids), *(k.public_key() for k in added)],
        release_threshold=args.release_threshold or release.threshold,
    )
    _publish(folder, current, signed, [])
    return EXIT_OK


def cmd_keys_add_command(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    _signers(folder, current)
    added = _new_keys(folder, "command", args.count, args.encrypt)
    role = current.signed.roles.command
    before = _public(current, role.keyids) if role else []
    signed = _next_root(
        current,
        args.expires_days,
        command_keys=[*before, *(k.public_key() for k in added)],
        command_threshold=args.command_threshold or (role.threshold if role else 1),
    )
    _publish(folder, current, signed, [])
    print(
        "push the new root to every device, then point the controller's command_key_path at "
        "the new key; `keys remove-command` drops the old one afterwards"
    )
    return EXIT_OK


def cmd_keys_remove_command(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    role = current.signed.roles.command
    keyids = role.keyids if role else ()
    matches = [k for k in keyids if k.startswith(args.keyid.lower())]
    if len(args.keyid) < 8 or len(matches) != 1:
        raise KeysError(f"{args.keyid!r} names {len(matches)} command keys; give 8+ hex digits")
    left = [k for k in keyids if k != matches[0]]
    threshold = min(role.threshold if role else 1, max(len(left), 1))
    if not left:
        raise KeysError("the last command key cannot go: devices would obey no command")
    signed = _next_root(
        current,
        args.expires_days,
        command_keys=_public(current, left),
        command_threshold=threshold,
    )
    _publish(folder, current, signed, [])
    print(f"removed command key {matches[0][:16]}…; push the new root to every device")
    return EXIT_OK


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
    signed = _next_root(current, args.expires_days, release_threshold=threshold, revoked=revoked)
    _publish(folder, current, signed, [])
    print(f"revoked release key {matches[0][:16]}…; push the new root to every device")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    current = _current(folder)
    files = {}
    for path in _pem_files(folder):
        public = path.with_suffix(".pub")
        if public.exists():
            files[PublicKey.from_hex(public.read_text().strip()).keyid] = path
    roles = current.signed.roles
    print(f"root version {current.version}, expires {current.expires.isoformat()}")
    for name in ROLES:
        role = getattr(roles, name)
        if role is None:
            print(f"{name}: none (devices obey only trust-update; `keys add-command`)")
            continue
        print(f"{name}: {role.threshold} of {len(role.keyids)}")
        for keyid in role.keyids:
            state = " revoked" if keyid in current.signed.revoked else ""
            where = files.get(keyid)
            print(f"  {keyid[:16]}…{state}  {where if where else '(not in this folder)'}")
    _warn_expiry(folder, args.warn_days)
    return EXIT_OK


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code = int(func(args))
        except (KeysError, RootRefused, ValidationError, ValueError, TypeError, OSError) as exc:
            print(f"edgefleet: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if func is not cmd_keys_list and code == EXIT_OK:
            _warn_expiry(args.dir)
        return code

    return run


def add_keys_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="root, release and command keys, the signed root")
    sub = parser.add_subparsers(dest="keys_command", required=True)

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--dir", type=Path, default=Path("keys"))
        p.set_defaults(func=_guarded(func))
        return p

    init = command("init", "make root, release and command keys and root 1", cmd_keys_init)
    init.add_argument("--root-keys", type=int, default=1)
    init.add_argument("--root-threshold", type=int, default=1)
    init.add_argument("--release-keys", "--count", type=int, default=1)
    init.add_argument("--release-threshold", "--threshold", type=int, default=1)
    init.add_argument("--command-keys", type=int, default=1)
    init.add_argument("--command-threshold", type=int, default=1)
    init.add_argument("--expires-days", type=int, default=365)
    init.add_argument("--force", action="store_true", help="replace existing keys and roots")
    init.add_argument(
        "--encrypt-command",
        action="store_true",
        help=f"encrypt the command key too (the controller then needs {PASSPHRASE_ENV})",
    )
    rotate = command("rotate-root", "new root keys, signed by old and new", cmd_keys_rotate_root)
    rotate.add_argument("--new-root-keys", type=int, default=None)
    rotate.add_argument("--root-threshold", type=int, default=None)
    add = command("add-release", "add release keys in a new root version", cmd_keys_add_release)
    add.add_argument("--count", type=int, default=1)
    revoke = command("revoke-release", "revoke a release key", cmd_keys_revoke_release)
    revoke.add_argument("keyid", help="the key's id, or 8+ leading hex digits of it")
    for p in (add, revoke):
        p.add_argument("--release-threshold", type=int, default=None)
    add_cmd = command(
        "add-command", "make a command key and list it in a new root", cmd_keys_add_command
    )
    add_cmd.add_argument("--count", type=int, default=1)
    add_cmd.add_argument("--command-threshold", type=int, default=None)
    remove_cmd = command(
        "remove-command", "drop a command key in a new root", cmd_keys_remove_command
    )
    remove_cmd.add_argument("keyid", help="the key's id, or 8+ leading hex digits of it")
    listing = command("list", "the keys of each role and the root's expiry", cmd_keys_list)
    listing.add_argument(
        "--warn-days",
        type=int,
        default=ROOT_EXPIRY_WARNING_DAYS,
        help="warn when the root expires within this many days",
    )
    for p in (init, rotate, add, revoke, add_cmd, remove_cmd):
        p.add_argument(
            "--encrypt",
            action="store_true",
            help=f"encrypt new root and release keys ({PASSPHRASE_ENV} or a prompt)",
        )
    for p in (rotate, add, revoke, add_cmd, remove_cmd):
        p.add_argument("--expires-days", type=int, default=None, help="default: keep expiry")
