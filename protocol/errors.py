"""Typed errors for everything that can be wrong with a message on the wire."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message or topic that does not follow the wire contract."""

    code = "protocol_error"


class InvalidDeviceId(ProtocolError):
    code = "invalid_device_id"


class UnknownTopic(ProtocolError):
    code = "unknown_topic"


class PayloadTooLarge(ProtocolError):
    code = "payload_too_large"


class UnsupportedVersion(ProtocolError):
    code = "unsupported_version"


class MalformedPayload(ProtocolError):
    """Not JSON, not UTF-8, NaN/Infinity, wrong types or missing fields."""

    code = "malformed_payload"


class UnexpectedMessage(ProtocolError):
    """Well-formed, but not the kind of message this topic carries."""

    code = "unexpected_message"
