"""Verification of the manifest and its signatures: what is checked before any file."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ota.build import BundleSpec, build_bundle
from ota.errors import BundleRefused
from ota.keys import SigningKey
from ota.manifest import Manifest
from ota.trust import TrustStore
from ota.verify import verify_bundle
from protocol.events import RefusalReason
from tests.ota.ota_forge import NOW, Member, file_members, forge, head, manifest_for, write_tar


def refusal(bundle: Path, trust: TrustStore, **kwargs: Any) -> RefusalReason:
    with bundle.open("rb") as f, pytest.raises(BundleRefused) as caught:
        verify_bundle(f, trust, kwargs.pop("now", NOW), **kwargs)
    return caught.value.reason


def test_built_bundle_verifies_to_its_manifest(
    spec_dir: Path, key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    spec = BundleSpec.from_yaml(spec_dir / "bundle.yaml")
    built = build_bundle(spec, spec_dir, [key], tmp_path / "face.bundle", NOW)

    with built.path.open("rb") as f:
        manifest = verify_bundle(f, trust, NOW, installed_version=3, profile="rpi5")

    assert manifest == built.manifest


def test_hand_made_bundle_verifies(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])

    manifest = verify_bundle(io.BytesIO(bundle.read_bytes()), trust, NOW)

    assert manifest.all_files().keys() == files.keys()


def test_no_signature_member_is_unsigned(
    files: dict[str, bytes], trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    only_manifest = write_tar(tmp_path / "a.tar", [Member("manifest.json", raw)])
    files_next = write_tar(tmp_path / "b.tar", [Member("manifest.json", raw), *file_members(files)])

    assert refusal(only_manifest, trust) is RefusalReason.UNSIGNED
    assert refusal(files_next, trust) is RefusalReason.UNSIGNED


def test_empty_signature_list_is_unsigned(
    files: dict[str, bytes], trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [])

    assert refusal(bundle, trust) is RefusalReason.UNSIGNED


def test_signature_by_an_untrusted_key_is_unknown_key(
    files: dict[str, bytes], trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [SigningKey.generate()])

    assert refusal(bundle, trust) is RefusalReason.UNKNOWN_KEY


def test_signature_by_a_revoked_key_is_revoked_key(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])

    assert refusal(bundle, trust.revoke(key.keyid)) is RefusalReason.REVOKED_KEY


def test_manifest_changed_after_signing_is_bad_signature(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    members = head(raw, [key])
    tampered = raw.replace(b'"version":3', b'"version":9')
    assert tampered != raw
    members[0] = Member("manifest.json", tampered)
    bundle = write_tar(tmp_path / "b.tar", [*members, *file_members(files)])

    assert refusal(bundle, trust) is RefusalReason.BAD_SIGNATURE


def test_same_signature_twice_does_not_meet_threshold_two(
    files: dict[str, bytes], key: SigningKey, tmp_path: Path
) -> None:
    second = SigningKey.generate()
    trust = TrustStore.from_keys([key.public_key(), second.public_key()], threshold=2)
    bundle = forge(tmp_path / "b.tar", files, [key, key])

    assert refusal(bundle, trust) is RefusalReason.THRESHOLD_NOT_MET


def test_two_distinct_keys_meet_threshold_two(
    files: dict[str, bytes], key: SigningKey, tmp_path: Path
) -> None:
    second = SigningKey.generate()
    trust = TrustStore.from_keys([key.public_key(), second.public_key()], threshold=2)
    bundle = forge(tmp_path / "b.tar", files, [key, SigningKey.generate(), second])

    with bundle.open("rb") as f:
        assert verify_bundle(f, trust, NOW).name == "face"


def test_one_good_signature_among_bad_ones_meets_threshold_one(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [SigningKey.generate(), key])

    with bundle.open("rb") as f:
        assert verify_bundle(f, trust, NOW).version == 3


@pytest.mark.parametrize("constant", ["nan", "inf", "-inf"])
def test_manifest_with_nan_or_infinity_is_malformed_even_when_signed(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path, constant: str
) -> None:
    data = manifest_for(files).model_dump(mode="json")
    # fields without range limits, where a float type alone would let the value through
    data["input"]["mean"][0] = float(constant)
    data["postprocess"]["params"] = {"anchor_scale": float(constant)}
    raw = json.dumps(data, allow_nan=True).encode()
    bundle = write_tar(tmp_path / "b.tar", [*head(raw, [key]), *file_members(files)])

    assert refusal(bundle, trust) is RefusalReason.MALFORMED_MANIFEST


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "3"), ("labels", "face"), ("expires", 1767225600), ("name", "Face!")],
)
def test_signed_manifest_with_wrong_types_is_malformed(
    files: dict[str, bytes],
    key: SigningKey,
    trust: TrustStore,
    tmp_path: Path,
    field: str,
    value: object,
) -> None:
    data = manifest_for(files).model_dump(mode="json")
    data[field] = value
    raw = json.dumps(data).encode()
    bundle = write_tar(tmp_path / "b.tar", [*head(raw, [key]), *file_members(files)])

    assert refusal(bundle, trust) is RefusalReason.MALFORMED_MANIFEST


def test_signed_manifest_with_a_repeated_key_is_malformed(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    raw = raw[:-1] + b',"version":1}'
    bundle = write_tar(tmp_path / "b.tar", [*head(raw, [key]), *file_members(files)])

    assert refusal(bundle, trust) is RefusalReason.MALFORMED_MANIFEST


def test_expiry_allows_the_clock_skew_and_no_more(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])
    expires = manifest_for(files).expires

    with bundle.open("rb") as f:
        verify_bundle(f, trust, expires + timedelta(minutes=4))
    assert refusal(bundle, trust, now=expires + timedelta(minutes=6)) is RefusalReason.EXPIRED
    assert (
        refusal(bundle, trust, now=expires + timedelta(seconds=1), clock_skew=timedelta(0))
        is RefusalReason.EXPIRED
    )


def test_manifest_created_in_the_future_is_not_yet_valid(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    manifest = manifest_for(files, created=NOW + timedelta(minutes=10))
    bundle = forge(tmp_path / "b.tar", files, [key], manifest=manifest)

    assert refusal(bundle, trust) is RefusalReason.NOT_YET_VALID
    with bundle.open("rb") as f:
        verify_bundle(f, trust, NOW + timedelta(minutes=6))


def test_lower_version_than_installed_is_rollback(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])

    assert refusal(bundle, trust, installed_version=4) is RefusalReason.ROLLBACK
    assert refusal(bundle, trust, installed_version={"face": 4}.get) is RefusalReason.ROLLBACK
    for same_or_other in (3, 2, {"person": 9}.get):
        with bundle.open("rb") as f:
            verify_bundle(f, trust, NOW, installed_version=same_or_other)


def test_profile_not_listed_is_incompatible(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    manifest = manifest_for(files, profiles=["rpi5"])
    bundle = forge(tmp_path / "b.tar", files, [key], manifest=manifest)
    any_profile = forge(tmp_path / "any.tar", files, [key])

    assert refusal(bundle, trust, profile="jetson-orin") is RefusalReason.INCOMPATIBLE_PROFILE
    for path, profile in ((bundle, "rpi5"), (bundle, None), (any_profile, "jetson-orin")):
        with path.open("rb") as f:
            verify_bundle(f, trust, NOW, profile=profile)


def test_manifest_must_be_the_first_member(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    sig, manifest = reversed(head(raw, [key]))
    bundle = write_tar(tmp_path / "b.tar", [sig, manifest, *file_members(files)])

    assert refusal(bundle, trust) is RefusalReason.MALFORMED_BUNDLE


def test_oversized_manifest_is_refused_before_it_is_read(
    key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = write_tar(tmp_path / "b.tar", [Member("manifest.json", b" " * (1 << 20) + b"{}")])

    assert refusal(bundle, trust) is RefusalReason.TOO_LARGE


def test_bundle_over_the_byte_cap_is_too_large(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])

    assert refusal(bundle, trust, max_bundle_bytes=50_000) is RefusalReason.TOO_LARGE
    assert refusal(bundle, trust, max_bundle_bytes=2_000) is RefusalReason.TOO_LARGE


@pytest.mark.parametrize(
    "content", [b"", b"not a tar at all" * 100, b"\x1f\x8b" + bytes(600)], ids=str
)
def test_garbage_is_a_malformed_bundle(trust: TrustStore, content: bytes) -> None:
    with pytest.raises(BundleRefused) as caught:
        verify_bundle(io.BytesIO(content), trust, NOW)

    assert caught.value.reason is RefusalReason.MALFORMED_BUNDLE


def test_malformed_signature_document_is_refused(
    files: dict[str, bytes], trust: TrustStore, tmp_path: Path
) -> None:
    raw = manifest_for(files).canonical_bytes()
    bundle = write_tar(
        tmp_path / "b.tar",
        [Member("manifest.json", raw), Member("manifest.sig", b'{"signatures": "yes"}')],
    )

    assert refusal(bundle, trust) is RefusalReason.MALFORMED_BUNDLE


def test_naive_time_is_a_caller_error(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    bundle = forge(tmp_path / "b.tar", files, [key])

    with bundle.open("rb") as f, pytest.raises(ValueError, match="UTC offset"):
        verify_bundle(f, trust, NOW.replace(tzinfo=None))


def test_returned_manifest_is_the_signed_one(
    files: dict[str, bytes], key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    manifest = manifest_for(files, version=7)
    bundle = forge(tmp_path / "b.tar", files, [key], manifest=manifest)

    with bundle.open("rb") as f:
        assert verify_bundle(f, trust, NOW) == Manifest.model_validate_json(
            manifest.canonical_bytes()
        )


def test_manifest_is_judged_by_its_signature_before_its_content(
    key: SigningKey, trust: TrustStore, tmp_path: Path
) -> None:
    garbage = b'{"version": NaN, "name": '
    stranger = write_tar(tmp_path / "s.tar", head(garbage, [SigningKey.generate()]))
    trusted = write_tar(tmp_path / "t.tar", head(garbage, [key]))

    assert refusal(stranger, trust) is RefusalReason.UNKNOWN_KEY
    assert refusal(trusted, trust) is RefusalReason.MALFORMED_MANIFEST
