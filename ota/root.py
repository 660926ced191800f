"""The signed root document: which keys sign roots, releases and commands, and how many must.

Modelled on TUF's root role. A pure core: functions take the document bytes and the time
and return a `Root` or raise `RootRefused`; reading and writing files is the caller's job.

Roles: `root` signs root documents, `release` signs bundle manifests, `command` signs the
controller's commands (`ota.commands`). The command role is rotated with the root like the
release role: a new command key reaches devices in root version N+1, listed beside the old
one until every device has that root, so commands signed by either key keep working.

Walking a chain of roots (`apply_root_chain`, as TUF does): each intermediate root must be
signed by the old and the new root threshold and carry the next version, but only the newest
root's expiry counts, so a device that was offline past an intermediate root's expiry still
reaches the newest root.

Migration of trust stores from before signed commands: a root (or plain store) without a
command role makes the agent refuse every command as `no_command_keys` except `trust-update`,
whose root documents vouch for themselves by their root signatures. Such a device is brought
to signed commands by pushing a root that lists the command keys; nothing else is accepted
unsigned, so an old store never weakens a device: it only narrows what it obeys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ota.canonical import canonical_json, check_strict_json, first_problem
from ota.errors import RootRefused
from ota.keys import PublicKey, SigningKey
from ota.layout import Signature
from ota.trust import TrustStore
from protocol.events import RefusalReason as R

MAX_ROOT_BYTES = 64 << 10
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
_MAX_KEYS = 64

KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _RootPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RoleKeys(_RootPart):
    """The keys of one role and how many of them must sign."""

    keyids: Annotated[tuple[KeyId, ...], Field(min_length=1, max_length=_MAX_KEYS)]
    threshold: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _sane(self) -> RoleKeys:
        if len(set(self.keyids)) != len(self.keyids):
            raise ValueError("a keyid is listed twice")
        if self.threshold > len(self.keyids):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(self.keyids)} keys")
        return self


class Roles(_RootPart):
    root: RoleKeys
    release: RoleKeys
    # absent in roots made before signed commands; see the module docstring
    command: RoleKeys | None = None


class RootSigned(_RootPart):
    """The signed part of a root document."""

    type: Literal["root"] = "root"
    version: Annotated[int, Field(ge=1)]
    expires: datetime
    keys: Annotated[dict[KeyId, str], Field(max_length=_MAX_KEYS)]
    roles: Roles
    revoked: Annotated[tuple[KeyId, ...], Field(max_length=_MAX_KEYS)] = ()

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("expires must carry a UTC offset")
        return value

    @model_validator(mode="after")
    def _keys_consistent(self) -> RootSigned:
        for keyid, key_hex in self.keys.items():
            # a keyid that is not its key's digest would let one key count as two
            if PublicKey.from_hex(key_hex).keyid != keyid:
                raise ValueError(f"keyid {keyid[:16]}... does not match its key")
        for name in ("root", "release", "command"):
            role: RoleKeys | None = getattr(self.roles, name)
            if role is None:
                continue
            missing = [k for k in role.keyids if k not in self.keys]
            if missing:
                raise ValueError(f"{name} role names unknown key {missing[0][:16]}...")
        return self

    def canonical_bytes(self) -> bytes:
        # a root without a command role keeps the bytes it was signed with
        return canonical_json(self.model_dump(mode="json", exclude_none=True))


class _Document(_RootPart):
    signed: dict[str, Any]
    signatures: Annotated[tuple[Signature, ...], Field(max_length=_MAX_KEYS)]


@dataclass(frozen=True)
class Root:
    """A root document whose own root threshold has signed it."""

    signed: RootSigned
    signatures: tuple[Signature, ...]
    raw: bytes

    @property
    def version(self) -> int:
        return self.signed.version

    @property
    def expires(self) -> datetime:
        return self.signed.expires

    def trust_store(self) -> TrustStore:
        """The release keys, threshold and revocations bundles are checked against."""
        release = self.signed.roles.release
        command = self.signed.roles.command
        return TrustStore(
            release_keys={k: self.signed.keys[k] for k in release.keyids},
            threshold=release.threshold,
            revoked=frozenset(self.signed.revoked),
            expires=self.signed.expires,
            root_version=self.signed.version,
            command_keys={k: self.signed.keys[k] for k in command.keyids} if command else {},
            command_threshold=command.threshold if command else 1,
        )

    def expires_within(self, now: datetime, days: int) -> bool:
        """True when this root expires before `now` + `days` (time to sign the next one)."""
        return self.expires <= now + timedelta(days=days)


def root_signed(
    *,
    version: int,
    expires: datetime,
    root_keys: Sequence[PublicKey],
    root_threshold: int,
    release_keys: Sequence[PublicKey],
    release_threshold: int,
    revoked: Iterable[str] = (),
    command_keys: Sequence[PublicKey] = (),
    command_threshold: int = 1,
) -> RootSigned:
    """The signed part of a root naming these keys; no command role when `command_keys` is
    empty. Raises pydantic.ValidationError."""
    keys = {key.keyid: key.to_hex() for key in [*root_keys, *release_keys, *command_keys]}
    command = (
        RoleKeys(keyids=tuple(k.keyid for k in command_keys), threshold=command_threshold)
        if command_keys
        else None
    )
    return RootSigned(
        version=version,
        expires=expires,
        keys=keys,
        roles=Roles(
            root=RoleKeys(keyids=tuple(k.keyid for k in root_keys), threshold=root_threshold),
            release=RoleKeys(
                keyids=tuple(k.keyid for k in release_keys), threshold=release_threshold
            ),
            command=command,
        ),
        revoked=tuple(sorted(set(revoked))),
    )


def is_root_document(data: bytes) -> bool:
    """True when `data` looks like a root document rather than a plain trust store."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(obj, dict) and "signed" in obj and "signatures" in obj


def trust_store_from_bytes(data: bytes) -> TrustStore:
    """The store a trust file's bytes describe: a signed root document's release role, or a
    plain store.

    A root's expiry is not checked here but by `verify_bundle`, so an expired root refuses
    bundles as `expired`. Raises RootRefused, pydantic.ValidationError (both ValueError)."""
    if is_root_document(data):
        return parse_root(data).trust_store()
    return TrustStore.model_validate_json(data)


def sign_root(signed: RootSigned, keys: Iterable[SigningKey]) -> bytes:
    """The document bytes of `signed` with one signature per distinct key, readable JSON."""
    message = signed.canonical_bytes()
    by_id = {key.keyid: key for key in keys}
    doc = {
        "signed": signed.model_dump(mode="json", exclude_none=True),
        "signatures": [{"keyid": k, "sig": key.sign(message).hex()} for k, key in by_id.items()],
    }
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("utf-8")


def parse_root(data: bytes) -> Root:
    """Parse a root document signed by its own root threshold; no clock involved.

    Raises RootRefused (malformed_root, root_threshold_not_met)."""
    doc, message = _parse_document(data)
    signed = _validate_signed(message)
    _require_threshold(signed, signed.roles.root, doc.signatures, message, "its own root keys")
    return Root(signed=signed, signatures=doc.signatures, raw=data)


def load_root(data: bytes, now: datetime, *, clock_skew: timedelta = DEFAULT_CLOCK_SKEW) -> Root:
    """Accept a first (pinned) root: self-signed and not expired.

    Raises RootRefused (malformed_root, root_threshold_not_met, expired); ValueError for a naive
    `now`."""
    root = parse_root(data)
    _require_fresh(root.signed, now, clock_skew)
    return root


def update_root(
    current: Root,
    new_data: bytes,
    now: datetime,
    *,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    check_expiry: bool = True,
) -> Root:
    """Accept version N+1 only if a threshold of the old and of the new root keys signed it;
    `check_expiry=False` for an intermediate root of a chain, whose expiry does not count.

    Raises RootRefused (malformed_root, root_threshold_not_met, root_version, expired);
    ValueError for a naive `now`."""
    doc, message = _parse_document(new_data)
    # the old keys vouch for the bytes before anything in them is believed
    _require_threshold(
        current.signed, current.signed.roles.root, doc.signatures, message, "the old root keys"
    )
    signed = _validate_signed(message)
    _require_threshold(signed, signed.roles.root, doc.signatures, message, "the new root keys")
    if signed.version != current.version + 1:
        raise RootRefused(
            R.ROOT_VERSION, f"version {signed.version} does not follow {current.version}"
        )
    if check_expiry:
        _require_fresh(signed, now, clock_skew)
    elif now.tzinfo is None:
        raise ValueError("now must carry a UTC offset")
    return Root(signed=signed, signatures=doc.signatures, raw=new_data)


def _parse_document(data: bytes) -> tuple[_Document, bytes]:
    if len(data) > MAX_ROOT_BYTES:
        raise RootRefused(R.MALFORMED_ROOT, f"{len(data)} bytes, cap {MAX_ROOT_BYTES}")
    try:
        # json first, to refuse what pydantic's parser would let through
        check_strict_json(data)
        doc = _Document.model_validate_json(data)
        # the signatures cover the canonical form, so whitespace and key order do not matter
        message = canonical_json(doc.signed)
    except ValueError as exc:
        raise RootRefused(R.MALFORMED_ROOT, first_problem(exc)) from exc
    return doc, message


def _validate_signed(message: bytes) -> RootSigned:
    try:
        signed = RootSigned.model_validate_json(message, strict=True)
    except ValidationError as exc:
        raise RootRefused(R.MALFORMED_ROOT, first_problem(exc)) from exc
    return signed


def _require_threshold(
    keys_from: RootSigned,
    role: RoleKeys,
    signatures: Sequence[Signature],
    message: bytes,
    whose: str,
) -> None:
    valid: set[str] = set()
    for entry in signatures:
        # counted by keyid, so repeating one signature never reaches a threshold
        if entry.keyid in valid or entry.keyid not in role.keyids:
            continue
        if entry.keyid in keys_from.revoked or len(entry.sig) != 128:
            continue
        key = PublicKey.from_hex(keys_from.keys[entry.keyid])
        if key.verify(bytes.fromhex(entry.sig), message):
            valid.add(entry.keyid)
    if len(valid) < role.threshold:
        raise RootRefused(
            R.ROOT_THRESHOLD_NOT_MET,
            f"{len(valid)} of {role.threshold} required signatures by {whose}",
        )


def require_fresh(root: Root, now: datetime, *, clock_skew: timedelta = DEFAULT_CLOCK_SKEW) -> None:
    """Refuse `root` if it expired before `now` (with the skew allowance).

    Raises RootRefused (expired); ValueError for a naive `now`."""
    _require_fresh(root.signed, now, clock_skew)


def _require_fresh(signed: RootSigned, now: datetime, skew: timedelta) -> None:
    if now.tzinfo is None:
        raise ValueError("now must carry a UTC offset")
    if now > signed.expires + skew:
        raise RootRefused(
            R.EXPIRED, f"root version {signed.version} expired {signed.expires.isoformat()}"
        )
