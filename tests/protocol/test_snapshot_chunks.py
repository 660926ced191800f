"""Snapshot chunk frames and the snapshot command on the wire."""

from __future__ import annotations

import pytest

from protocol.codec import decode_command, decode_snapshot_chunk, encode, encode_snapshot_chunk
from protocol.errors import MalformedPayload
from protocol.messages import Snapshot
from protocol.topics import Channel, Topics


def test_snapshot_chunk_round_trips_with_its_command_id():
    payload = encode_snapshot_chunk("abcdef0123", 2, 5, b"\xff\xd8jpeg")
    got = decode_snapshot_chunk(payload)
    assert (got.cmd_id, got.chunk.index, got.chunk.total, got.chunk.data) == (
        "abcdef0123",
        2,
        5,
        b"\xff\xd8jpeg",
    )


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x09abc", b"\x00" + b"EFC1", b"\x02\xff\xfe" + b"x" * 20],
)
def test_garbage_snapshot_chunks_are_refused(payload):
    with pytest.raises(MalformedPayload):
        decode_snapshot_chunk(payload)


def test_a_corrupted_snapshot_chunk_fails_its_checksum():
    payload = bytearray(encode_snapshot_chunk("abcdef0123", 0, 1, b"data" * 10))
    payload[-1] ^= 0xFF
    with pytest.raises(MalformedPayload):
        decode_snapshot_chunk(bytes(payload))


def test_snapshot_command_decodes_and_its_topic_parses():
    command = Snapshot(device="dev-1", camera="cam0", track_id=3, upload_url="http://h:1/a")
    assert decode_command(encode(command)) == command
    topics = Topics()
    assert topics.parse(topics.snap("dev-1")).channel is Channel.SNAP
    with pytest.raises(ValueError):
        Snapshot(device="dev-1", camera="cam0", track_id=3, upload_url="file:///etc/passwd")
