from __future__ import annotations

import pickle

from ota.errors import BundleRefused
from protocol.events import RefusalReason

REQUIRED = {
    "unsigned",
    "bad_signature",
    "unknown_key",
    "revoked_key",
    "threshold_not_met",
    "expired",
    "not_yet_valid",
    "rollback",
    "hash_mismatch",
    "size_mismatch",
    "unlisted_file",
    "missing_file",
    "unsafe_path",
    "unsafe_member",
    "malformed_manifest",
    "malformed_bundle",
    "incompatible_profile",
    "too_large",
}


def test_every_documented_reason_exists() -> None:
    assert REQUIRED - {reason.value for reason in RefusalReason} == set()


def test_refusal_message_is_reason_then_detail() -> None:
    refused = BundleRefused(RefusalReason.ROLLBACK, "face version 2 < installed 3")

    assert str(refused) == "rollback: face version 2 < installed 3"
    assert refused.reason is RefusalReason.ROLLBACK
    assert refused.detail == "face version 2 < installed 3"
    assert RefusalReason("rollback") is RefusalReason.ROLLBACK
    assert f"{RefusalReason.EXPIRED}" == "expired"


def test_refusal_survives_pickling() -> None:
    refused = BundleRefused(RefusalReason.HASH_MISMATCH, "model.tflite")

    again = pickle.loads(pickle.dumps(refused))

    assert (again.reason, again.detail, str(again)) == (
        refused.reason,
        refused.detail,
        str(refused),
    )
