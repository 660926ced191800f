"""Encoding and decoding of wire messages: bytes in, typed models or typed errors out."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from protocol.errors import (
    InvalidDeviceId,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    UnexpectedMessage,
    UnsupportedVersion,
)
from protocol.messages import (
    Ack,
    AgentMessage,
    Command,
    DetectionBatch,
    Envelope,
    Event,
    Health,
    State,
)
from protocol.topics import Channel, ParsedTopic, Topics

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 1 << 20

M = TypeVar("M", bound=BaseModel)

_CHANNEL_MODEL: dict[Channel, type[Envelope]] = {
    Channel.STATE: State,
    Channel.HEALTH: Health,
    Channel.DET: DetectionBatch,
    Channel.EVT: Event,
    Channel.ACK: Ack,
}
_COMMAND = TypeAdapter[Command](Command)


def encode(message: BaseModel) -> bytes:
    """Serialise a message to compact JSON bytes."""
    return message.model_dump_json(exclude_none=True).encode("utf-8")


def _check_size(payload: bytes | bytearray, limit: int) -> None:
    if len(payload) > limit:
        raise PayloadTooLarge(f"payload of {len(payload)} bytes exceeds the {limit} byte cap")


# pydantic error types raised by the envelope's validators (protocol.messages.Envelope)
_ERROR_TYPES: dict[str, type[ProtocolError]] = {
    "unsupported_version": UnsupportedVersion,
    "invalid_device_id": InvalidDeviceId,
}


def _translate(err: ValidationError) -> ProtocolError:
    for item in err.errors(include_url=False):
        error_class = _ERROR_TYPES.get(item["type"])
        if error_class is not None:
            return error_class(item["msg"])
    first = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return MalformedPayload(f"{where}: {first['msg']} ({err.error_count()} error(s))")


def decode(payload: bytes | bytearray, model: type[M], *, limit: int = MAX_PAYLOAD_BYTES) -> M:
    """Decode one message of a known model; raises a ProtocolError subclass."""
    _check_size(payload, limit)
    try:
        return model.model_validate_json(payload)
    except ValidationError as err:
        raise _translate(err) from None


def decode_command(payload: bytes | bytearray, *, limit: int = MAX_PAYLOAD_BYTES) -> Command:
    """Decode a command sent to an agent; raises a ProtocolError subclass."""
    _check_size(payload, limit)
    try:
        return _COMMAND.validate_json(payload)
    except ValidationError as err:
        raise _translate(err) from None


def decode_agent_message(
    topics: Topics, topic: str, payload: bytes | bytearray
) -> tuple[ParsedTopic, AgentMessage]:
    """Decode what an agent published, checking it came from the device it names."""
    parsed = topics.parse(topic)
    if parsed.channel is None or parsed.channel not in _CHANNEL_MODEL:
        raise UnexpectedMessage(f"topic {topic!r:.200} is not an agent channel")
    message = decode(payload, _CHANNEL_MODEL[parsed.channel])
    if message.device != parsed.device_id:
        raise UnexpectedMessage(
            f"message names device {message.device!r} but came on {parsed.device_id!r}'s topic"
        )
    return parsed, message  # type: ignore[return-value]


# ---- bundle chunks: binary frames on …/bundle/<digest>/chunk --------------------------------

_CHUNK_MAGIC = b"EFC1"
_CHUNK_HEADER = struct.Struct(">4sIII")  # magic, index, total, crc32 of data


@dataclass(frozen=True)
class Chunk:
    index: int
    total: int
    data: bytes


def encode_chunk(index: int, total: int, data: bytes) -> bytes:
    """Frame one chunk of a bundle; raises ValueError on impossible numbers."""
    if not 0 <= index < total or len(data) > MAX_CHUNK_BYTES:
        raise ValueError(f"bad chunk {index}/{total} of {len(data)} bytes")
    return _CHUNK_HEADER.pack(_CHUNK_MAGIC, index, total, zlib.crc32(data)) + data


def decode_chunk(payload: bytes | bytearray) -> Chunk:
    """Unframe one chunk, checking its header and checksum; raises MalformedPayload."""
    _check_size(payload, MAX_CHUNK_BYTES + _CHUNK_HEADER.size)
    if len(payload) < _CHUNK_HEADER.size:
        raise MalformedPayload("chunk shorter than its header")
    magic, index, total, crc = _CHUNK_HEADER.unpack_from(payload)
    if magic != _CHUNK_MAGIC:
        raise MalformedPayload("chunk has the wrong magic bytes")
    if not 0 <= index < total:
        raise MalformedPayload(f"chunk index {index} outside 0..{total - 1}")
    data = bytes(payload[_CHUNK_HEADER.size :])
    if zlib.crc32(data) != crc:
        raise MalformedPayload(f"chunk {index} fails its checksum")
    return Chunk(index=index, total=total, data=data)


# ---- snapshot chunks: binary frames on …/dev/D/snap ------------------------------------------
# The snapshot command's id (ASCII, length-prefixed) followed by a bundle-style chunk frame, so
# a receiver can tell apart the chunks of two snapshots in flight; the ack follows the chunks.


@dataclass(frozen=True)
class SnapshotChunk:
    cmd_id: str
    chunk: Chunk


def encode_snapshot_chunk(cmd_id: str, index: int, total: int, data: bytes) -> bytes:
    """Frame one chunk of a snapshot JPEG; raises ValueError on a bad id or numbers."""
    raw = cmd_id.encode("ascii")
    if not 1 <= len(raw) <= 64:
        raise ValueError(f"bad command id {cmd_id!r:.80}")
    return bytes([len(raw)]) + raw + encode_chunk(index, total, data)


def decode_snapshot_chunk(payload: bytes | bytearray) -> SnapshotChunk:
    """Unframe one snapshot chunk; raises MalformedPayload."""
    if not payload or len(payload) < 1 + payload[0]:
        raise MalformedPayload("snapshot chunk shorter than its command id")
    size = payload[0]
    try:
        cmd_id = bytes(payload[1 : 1 + size]).decode("ascii")
    except UnicodeDecodeError:
        raise MalformedPayload("snapshot chunk command id is not ASCII") from None
    if not cmd_id:
        raise MalformedPayload("snapshot chunk has an empty command id")
    return SnapshotChunk(cmd_id, decode_chunk(payload[1 + size :]))
