"""Named values both sides agree on: event kinds, deployment statuses, reason codes, runtimes.

Each is a `str` enum, so its value is what travels on the wire and what the dashboard shows. The
wire models keep accepting any short string for a reason (a newer agent may know more reasons
than an older controller); what this side emits is always a member of one of these enums.
"""

from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    def __str__(self) -> str:
        return self.value


class RuntimeKey(_Named):
    """Inference runtimes an agent may carry a plug-in for; the one list of their keys."""

    TENSORRT = "tensorrt"
    EDGETPU = "edgetpu"
    OPENVINO = "openvino"
    ONNX = "onnx"
    LITERT = "litert"
    OPENCV = "opencv"


class DeviceStatus(_Named):
    """A device's connection as its retained state says; `offline` is also its Last Will."""

    ONLINE = "online"
    OFFLINE = "offline"


class RuntimeWorkerState(_Named):
    """What a runtime worker process is doing, as the agent's health reports it."""

    RUNNING = "running"
    # it died; a new one starts with a later frame, after its back-off
    RESTARTING = "restarting"
    # no model loaded in it (closed, or swapped out)
    STOPPED = "stopped"


class EventKind(_Named):
    """What a device event on `…/dev/D/evt` reports."""

    DEPLOY_OFFERED = "deploy_offered"
    DOWNLOADING = "downloading"
    CHUNK_REQUEST = "chunk_request"
    VERIFIED = "verified"
    INSTALLING = "installing"
    PROBATION = "probation"
    RUNNING = "running"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    ERROR = "error"
    LOG = "log"


class EventLevel(_Named):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class DeploymentStatus(_Named):
    """Where one deployment of one bundle to one device stands, in the order it moves."""

    PENDING = "pending"
    SENT = "sent"
    ACCEPTED = "accepted"
    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    INSTALLING = "installing"
    PROBATION = "probation"
    RUNNING = "running"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class RefusalReason(_Named):
    """The one reason a bundle or root document was refused."""

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
    # a PAX or GNU extended header over the cap, or of a kind bundles never need
    EXTENDED_HEADER = "extended_header"
    # bytes after the end-of-archive marker (a second archive, garbage, non-zero padding)
    TRAILING_DATA = "trailing_data"
    # fit for this device
    INCOMPATIBLE_PROFILE = "incompatible_profile"
    # the root document that says which keys count
    MALFORMED_ROOT = "malformed_root"
    ROOT_THRESHOLD_NOT_MET = "root_threshold_not_met"
    ROOT_VERSION = "root_version"
    NO_ROOT = "no_root"


class TransferReason(_Named):
    """Why a bundle's bytes did not arrive (a bad file that did arrive is a RefusalReason)."""

    BAD_OFFER = "bad_offer"
    STALLED = "stalled"
    DOWNLOAD_FAILED = "download_failed"
    HTTP_STATUS = "http_status"
    BAD_RESPONSE = "bad_response"
    CANCELLED = "cancelled"
    # offers this device refuses before fetching a byte
    OFFER_TOO_LARGE = "offer_too_large"
    NO_DISK_SPACE = "no_disk_space"
    FOREIGN_ORIGIN = "foreign_origin"


class InstallReason(_Named):
    """Why a verified bundle did not become (or stay) the running one."""

    NO_TRUST_STORE = "no_trust_store"
    INSTALL_ERROR = "install_error"
    COMMIT_FAILED = "commit_failed"
    NO_PREVIOUS_BUNDLE = "no_previous_bundle"
    # the previous bundle's release is below the device's anti-rollback floor
    BELOW_RELEASE_FLOOR = "below_release_floor"
    PROBATION_CRASHES = "probation_crashes"
    NO_RUNTIME = "no_runtime"
    LOAD_FAILED = "load_failed"
    STORE_CORRUPT = "store_corrupt"
    # a bundle on probation left because another took its place, or an operator asked
    SUPERSEDED = "superseded"
    ROLLBACK_REQUESTED = "requested"
    # probation judgements
    NOT_ACTIVE = "not_active"
    INFERENCE_ERRORS = "inference_errors"
    NO_FRAMES = "no_frames"


class CommandRefusal(_Named):
    """Why the agent refused a command before acting on it; the result of its negative ack."""

    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    THRESHOLD_NOT_MET = "threshold_not_met"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"
    MISADDRESSED = "misaddressed"
    # the device's trust lists no command keys (a store from before signed commands)
    NO_COMMAND_KEYS = "no_command_keys"
    NO_TRUST_STORE = "no_trust_store"


Reason = RefusalReason | TransferReason | InstallReason
"""Any reason code an agent puts in a deployment event."""
