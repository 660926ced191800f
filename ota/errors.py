"""Why a bundle was refused, in words an operator can act on."""

from __future__ import annotations

from enum import Enum


class RefusalReason(str, Enum):
    """The one reason a bundle was refused; its value is what the dashboard shows."""

    # signatures
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    THRESHOLD_NOT_MET = "threshold_not_met"
    # freshness
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ROLLBACK = "rollback"
    # file contents
    HASH_MISMATCH = "hash_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    UNLISTED_FILE = "unlisted_file"
    MISSING_FILE = "missing_file"
    DUPLICATE_FILE = "duplicate_file"
    # archive shape
    UNSAFE_PATH = "unsafe_path"
    UNSAFE_MEMBER = "unsafe_member"
    MALFORMED_MANIFEST = "malformed_manifest"
    MALFORMED_BUNDLE = "malformed_bundle"
    TOO_LARGE = "too_large"
    # fit for this device
    INCOMPATIBLE_PROFILE = "incompatible_profile"
    # the root document that says which keys count
    MALFORMED_ROOT = "malformed_root"
    ROOT_THRESHOLD_NOT_MET = "root_threshold_not_met"
    ROOT_VERSION = "root_version"
    NO_ROOT = "no_root"

    def __str__(self) -> str:
        return self.value


class BundleRefused(Exception):
    """A bundle that must not be used, with the reason and a human-readable detail."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[BundleRefused], tuple[RefusalReason, str]]:
        # the default rebuilds from the message alone, which __init__ cannot take
        return (type(self), (self.reason, self.detail))


class RootRefused(ValueError):
    """A root document that must not become the device's trust, with the reason."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[RootRefused], tuple[RefusalReason, str]]:
        return (type(self), (self.reason, self.detail))
