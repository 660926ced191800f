"""Device kinds as YAML profiles, the loader, and the hardware probe that picks one."""

from device_profiles.errors import (
    NoProfileMatchedError,
    ProfileError,
    ProfileFileError,
    UnknownProfileError,
)
from device_profiles.loader import get_profile, load_profile_file, load_profiles
from device_profiles.probe import (
    Detection,
    HardwareFacts,
    detect,
    detect_profile,
    effective_runtimes,
    match_profile,
    probe_hardware,
)
from device_profiles.schema import (
    Accelerator,
    Camera,
    DeviceProfile,
    Match,
    RuntimeName,
    RuntimePreference,
)

__all__ = [
    "Accelerator",
    "Camera",
    "Detection",
    "DeviceProfile",
    "HardwareFacts",
    "Match",
    "NoProfileMatchedError",
    "ProfileError",
    "ProfileFileError",
    "RuntimeName",
    "RuntimePreference",
    "UnknownProfileError",
    "detect",
    "detect_profile",
    "effective_runtimes",
    "get_profile",
    "load_profile_file",
    "load_profiles",
    "match_profile",
    "probe_hardware",
]
