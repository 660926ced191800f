"""Why a profile could not be loaded or chosen."""

from __future__ import annotations

from pathlib import Path


class ProfileError(Exception):
    """Base for every device-profile failure."""


class ProfileFileError(ProfileError):
    """A profile file is unreadable, not YAML, or not a valid profile; names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class UnknownProfileError(ProfileError):
    """A profile was asked for by a name that no profile file has."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"unknown device profile {name!r}; known: {', '.join(known) or 'none'}")


class NoProfileMatchedError(ProfileError):
    """No profile matches the probed hardware and none was forced."""
