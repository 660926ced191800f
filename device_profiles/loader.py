"""Read the device-profile YAML files shipped with the package (or from another folder)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from device_profiles.errors import ProfileFileError, UnknownProfileError
from device_profiles.schema import DeviceProfile

PACKAGE_DIR = Path(__file__).resolve().parent


def load_profile_file(path: Path) -> DeviceProfile:
    """Parse one profile file; raises ProfileFileError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileFileError(path, f"cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileFileError(path, f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileFileError(path, f"expected a mapping, got {type(data).__name__}")
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileFileError(path, f"not a valid device profile: {exc}") from exc
    # The file name is the profile's name, so an operator can find the file from a log line.
    if profile.name != path.stem:
        raise ProfileFileError(path, f"profile name {profile.name!r} differs from file name")
    return profile


def load_profiles(directory: Path | None = None) -> dict[str, DeviceProfile]:
    """All profiles in a folder (the package's own by default), by name; raises ProfileFileError."""
    folder = PACKAGE_DIR if directory is None else Path(directory)
    profiles: dict[str, DeviceProfile] = {}
    for path in sorted(folder.glob("*.yaml")):
        profile = load_profile_file(path)
        profiles[profile.name] = profile
    return profiles


def get_profile(name: str, directory: Path | None = None) -> DeviceProfile:
    """One profile by name; raises UnknownProfileError, or ProfileFileError on a bad file."""
    profiles = load_profiles(directory)
    try:
        return profiles[name]
    except KeyError:
        raise UnknownProfileError(name, sorted(profiles)) from None
