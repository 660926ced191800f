"""The one HTTP origin this agent talks to: the controller's. Bundle downloads and snapshot
uploads go nowhere else, and over https the server must prove itself with the fleet CA.

A command names a URL, and commands can be forged or mistaken; checking the URL against the
origin set in the local settings keeps a device from fetching from, or sending camera frames
to, anyone but its controller.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


class ForeignOrigin(ValueError):
    """A URL outside the controller's configured origin."""


@dataclass(frozen=True)
class ControllerOrigin:
    """`origin` is `scheme://host[:port]`; None allows any port and scheme on `fallback_host`
    (the broker's host: the controller of an embedded setup). `ca_file` verifies https."""

    origin: str | None = None
    fallback_host: str | None = None
    ca_file: Path | None = None

    def check(self, url: str) -> str:
        """`url` itself when it lies under the origin. Raises ForeignOrigin."""
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError as exc:
            raise ForeignOrigin(f"unreadable URL: {exc}") from None
        host = (parts.hostname or "").lower()
        if parts.scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
            raise ForeignOrigin(f"{parts.scheme}://{host} is not an http(s) origin")
        if self.origin is not None:
            want = urlsplit(self.origin)
            want_port = want.port or _DEFAULT_PORTS.get(want.scheme)
            want_host = (want.hostname or "").lower()
            if (parts.scheme, host, port) == (want.scheme, want_host, want_port):
                return url
            raise ForeignOrigin(f"{parts.scheme}://{host}:{port} is not {self.origin}")
        if self.fallback_host is not None and host == self.fallback_host.lower():
            return url
        raise ForeignOrigin(f"{host} is not the controller's host ({self.fallback_host})")

    def verify(self) -> ssl.SSLContext | bool:
        """What an HTTP client verifies https servers with: the fleet CA when one is set."""
        if self.ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_file))
