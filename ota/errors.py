"""The errors that refuse a bundle or a root document; each carries its RefusalReason."""

from __future__ import annotations

from protocol.events import RefusalReason


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
