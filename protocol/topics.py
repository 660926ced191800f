"""Topic names of the wire contract, built and parsed in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from protocol.errors import InvalidDeviceId, UnknownTopic

DEFAULT_PREFIX = "edgefleet/v1"

_DEVICE_ID_RE = re.compile(r"^[a-z0-9-]{3,64}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class Channel(str, Enum):
    """The per-device channels; the value is the last topic level."""

    STATE = "state"
    HEALTH = "health"
    DET = "det"
    EVT = "evt"
    CMD = "cmd"
    ACK = "ack"
    # binary snapshot chunks (protocol.codec.encode_snapshot_chunk), not JSON messages
    SNAP = "snap"


AGENT_CHANNELS = frozenset({Channel.STATE, Channel.HEALTH, Channel.DET, Channel.EVT, Channel.ACK})


def validate_device_id(device_id: object) -> str:
    """Return the id if it is a string and a valid device id; raises InvalidDeviceId otherwise."""
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise InvalidDeviceId(f"device id must match [a-z0-9-]{{3,64}}, got {device_id!r:.80}")
    return device_id


def validate_digest(digest: str) -> str:
    """Return the digest if it is 64 lowercase hex characters; raises UnknownTopic otherwise."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise UnknownTopic(f"bundle digest must be 64 lowercase hex characters, got {digest!r:.80}")
    return digest


@dataclass(frozen=True)
class ParsedTopic:
    """A topic taken apart: a device channel, or a bundle's chunk topic."""

    channel: Channel | None
    device_id: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class Topics:
    """Builds and parses the topics under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"invalid topic prefix {self.prefix!r}")

    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self.prefix}/dev/{validate_device_id(device_id)}/{channel.value}"

    def state(self, device_id: str) -> str:
        return self.device(device_id, Channel.STATE)

    def health(self, device_id: str) -> str:
        return self.device(device_id, Channel.HEALTH)

    def det(self, device_id: str) -> str:
        return self.device(device_id, Channel.DET)

    def evt(self, device_id: str) -> str:
        return self.device(device_id, Channel.EVT)

    def cmd(self, device_id: str) -> str:
        return self.device(device_id, Channel.CMD)

    def ack(self, device_id: str) -> str:
        return self.device(device_id, Channel.ACK)

    def snap(self, device_id: str) -> str:
        return self.device(device_id, Channel.SNAP)

    def bundle_chunks(self, digest: str) -> str:
        return f"{self.prefix}/bundle/{validate_digest(digest)}/chunk"

    def device_filter(self, channel: Channel | None = None) -> str:
        """Subscription filter for one channel (or all) of every device."""
        return f"{self.prefix}/dev/+/{channel.value if channel else '+'}"

    def parse(self, topic: str) -> ParsedTopic:
        """Take a topic apart; raises UnknownTopic or InvalidDeviceId."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise UnknownTopic(f"topic outside prefix {self.prefix!r}: {topic!r:.200}")
        parts = topic[len(head) :].split("/")
        if len(parts) == 3 and parts[0] == "dev":
            try:
                channel = Channel(parts[2])
            except ValueError:
                raise UnknownTopic(f"unknown channel {parts[2]!r:.40}") from None
            return ParsedTopic(channel=channel, device_id=validate_device_id(parts[1]))
        if len(parts) == 3 and parts[0] == "bundle" and parts[2] == "chunk":
            return ParsedTopic(channel=None, digest=validate_digest(parts[1]))
        raise UnknownTopic(f"unknown topic {topic!r:.200}")
