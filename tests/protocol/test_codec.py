import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.codec import (
    MAX_PAYLOAD_BYTES,
    decode,
    decode_agent_message,
    decode_chunk,
    decode_command,
    encode,
    encode_chunk,
)
from protocol.errors import (
    InvalidDeviceId,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    UnexpectedMessage,
    UnsupportedVersion,
)
from protocol.events import DeviceStatus, RuntimeWorkerState
from protocol.messages import (
    Ack,
    Box,
    BundleOffer,
    CameraHealth,
    ChunkRange,
    Deploy,
    Detection,
    DetectionBatch,
    Event,
    Health,
    Rollback,
    RuntimeWorkerHealth,
    State,
)
from protocol.topics import Topics

device_ids = st.from_regex(r"\A[a-z0-9-]{3,64}\Z")
idents = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
units = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False)
# any text a wire string may hold: everything but NUL
wire_chars = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(wire_chars, max_size=200)


@st.composite
def detections(draw):
    x1, x2 = sorted((draw(units), draw(units)))
    y1, y2 = sorted((draw(units), draw(units)))
    return Detection(
        camera=draw(idents),
        track_id=draw(st.none() | st.integers(min_value=0, max_value=2**31)),
        label=draw(st.text(wire_chars, max_size=40)),
        score=draw(units),
        box=Box(x1=x1, y1=y1, x2=x2, y2=y2),
        ts=draw(times),
    )


batches = st.builds(
    DetectionBatch,
    device=device_ids,
    detections=st.lists(detections(), max_size=20).map(tuple),
    model=texts,
)
healths = st.builds(
    Health,
    device=device_ids,
    cpu_percent=st.none() | st.floats(min_value=0, max_value=800, allow_nan=False),
    temperatures_c=st.dictionaries(
        st.text(wire_chars, max_size=20),
        st.floats(-40, 150, allow_nan=False),
        max_size=5,
    ),
    cameras=st.lists(
        st.builds(CameraHealth, camera=idents, fps_in=st.floats(0, 240, allow_nan=False)),
        max_size=3,
    ).map(tuple),
    runtime_workers=st.lists(
        st.builds(
            RuntimeWorkerHealth,
            runtime=idents,
            state=st.sampled_from(list(RuntimeWorkerState)),
            pid=st.none() | st.integers(min_value=1, max_value=2**22),
            crashes=st.integers(min_value=0, max_value=10**6),
            last_crash=texts,
        ),
        max_size=3,
    ).map(tuple),
)
events = st.builds(
    Event,
    device=device_ids,
    kind=st.sampled_from(["downloading", "chunk_request", "failed", "running"]),
    message=texts,
    progress=st.none() | units,
    missing=st.lists(
        st.builds(ChunkRange, start=st.integers(0, 1000), end=st.integers(0, 1000)), max_size=5
    ).map(tuple),
)
states = st.builds(State, device=device_ids, status=st.sampled_from(["online", "offline"]))
acks = st.builds(Ack, device=device_ids, cmd_id=idents, ok=st.booleans(), detail=texts)


@settings(max_examples=200)
@given(st.one_of(batches, healths, events, states, acks))
def test_agent_messages_round_trip_through_their_topic(message):
    topics = Topics()
    topic = f"{topics.prefix}/dev/{message.device}/{message.type}"
    parsed, decoded = decode_agent_message(topics, topic, encode(message))
    assert decoded == message
    assert parsed.device_id == message.device


@given(device_ids, idents, st.integers(1, 10**6), st.integers(1, 2**30))
def test_commands_round_trip(device_id, name, version, size):
    offer = BundleOffer(
        name=name,
        version=version,
        digest="f" * 64,
        size=size,
        chunk_size=65536,
        chunks=max(1, size // 65536),
    )
    for command in (Deploy(device=device_id, bundle=offer), Rollback(device=device_id)):
        assert decode_command(encode(command)) == command


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_garbage_bytes_raise_only_protocol_errors(payload):
    for decoder in (lambda p: decode(p, State), decode_command):
        try:
            decoder(payload)
        except ProtocolError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["v", "type", "id", "ts", "device", "status", "detections", "bundle"]),
        json_values,
    )
)
def test_garbage_json_objects_raise_only_protocol_errors(obj):
    payload = json.dumps(obj).encode()
    for model in (State, DetectionBatch, Health, Event):
        try:
            decode(payload, model)
        except ProtocolError:
            pass
    try:
        decode_command(payload)
    except ProtocolError:
        pass


def _state_dict(**over):
    base = {
        "v": "1.0",
        "type": "state",
        "id": "0123456789abcdef",
        "ts": 1.0,
        "device": "cam-01",
        "status": "online",
    }
    base.update(over)
    return base


def test_unknown_major_version_is_refused_with_its_own_error():
    with pytest.raises(UnsupportedVersion):
        decode(json.dumps(_state_dict(v="2.0")).encode(), State)


def test_newer_minor_version_with_unknown_fields_is_accepted():
    state = decode(json.dumps(_state_dict(v="1.7", future_field=[1, 2])).encode(), State)
    assert state.v == "1.7"


def test_health_of_an_older_agent_without_runtime_workers_decodes():
    health = decode(json.dumps({**_health_dict(), "uptime_s": 5.0}).encode(), Health)
    assert health.runtime_workers == ()


def test_runtime_workers_round_trip_in_health():
    worker = RuntimeWorkerHealth(
        runtime="tensorrt",
        state=RuntimeWorkerState.RESTARTING,
        crashes=3,
        restarts=2,
        last_crash="worker pid 41 exited: exit status -9",
    )
    health = Health(device="cam-01", runtime_workers=(worker,))
    decoded = decode(encode(health), Health)
    assert decoded.runtime_workers == (worker,)
    assert decoded.runtime_workers[0].state == RuntimeWorkerState.RESTARTING
    assert decoded.runtime_workers[0].pid is None


def test_a_worker_state_a_newer_agent_knows_still_decodes():
    worker = {"runtime": "onnx", "state": "paused", "pid": 7}
    health = decode(json.dumps({**_health_dict(), "runtime_workers": [worker]}).encode(), Health)
    assert health.runtime_workers[0].state == "paused"


@pytest.mark.parametrize(
    "worker",
    [
        {"runtime": "onnx", "state": "running", "crashes": -1},
        {"runtime": "onnx", "state": "running", "pid": 0},
        {"runtime": "onnx", "state": "running", "last_crash": "x" * 257},
        {"runtime": "onnx", "state": "running", "last_crash": "a\x00b"},
        {"runtime": "", "state": "running"},
    ],
)
def test_a_bad_runtime_worker_in_health_is_refused(worker):
    payload = json.dumps({**_health_dict(), "runtime_workers": [worker]})
    with pytest.raises(MalformedPayload):
        decode(payload.encode(), Health)


def _health_dict() -> dict:
    return {"v": "1.0", "type": "health", "id": "b" * 32, "ts": 1.0, "device": "cam-01"}


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(literal):
    payload = json.dumps(_state_dict()).replace('"ts": 1.0', f'"ts": {literal}').encode()
    with pytest.raises(MalformedPayload):
        decode(payload, State)


def test_nan_inside_a_nested_float_is_refused():
    health = Health(device="cam-01", temperatures_c={"cpu": 50.0})
    payload = encode(health).replace(b"50.0", b"NaN")
    with pytest.raises(MalformedPayload):
        decode(payload, Health)
    assert not math.isnan(decode(encode(health), Health).temperatures_c["cpu"])


@pytest.mark.parametrize(
    "payload",
    [
        b'{"device": "cam-01", "cameras": [{"camera": "c", "last_error": "a\\u0000b"}]}',
        b'{"device": "cam-01", "unavailable": {"npu\\u0000": "gone"}}',
        b'{"device": "cam-01", "type": "evt", "kind": "log", "message": "x\\u0000"}',
    ],
)
def test_nul_characters_in_text_are_refused(payload):
    # PostgreSQL keeps no NUL in text, and a JSON path through one fails the whole query
    model = Event if b'"evt"' in payload else Health
    with pytest.raises(MalformedPayload):
        decode(payload, model)


@pytest.mark.parametrize(
    "over",
    [{"ts": "yesterday"}, {"status": 1}, {"ts": True}, {"id": 5}, {"status": "sleeping"}],
)
def test_wrong_types_are_refused(over):
    with pytest.raises(MalformedPayload):
        decode(json.dumps(_state_dict(**over)).encode(), State)


@pytest.mark.parametrize("device", ["cam/01", "+", "#", "CAM"])
def test_bad_device_id_in_payload_is_refused(device):
    with pytest.raises(InvalidDeviceId):
        decode(json.dumps(_state_dict(device=device)).encode(), State)


def test_oversized_payload_is_refused_before_parsing():
    with pytest.raises(PayloadTooLarge):
        decode(b" " * (MAX_PAYLOAD_BYTES + 1), State)


def test_box_outside_the_frame_is_refused():
    batch = {
        "v": "1.0",
        "type": "det",
        "id": "0123456789abcdef",
        "ts": 1.0,
        "device": "cam-01",
        "detections": [
            {
                "camera": "c0",
                "label": "face",
                "score": 0.9,
                "ts": 1.0,
                "box": {"x1": 0, "y1": 0, "x2": 1.5, "y2": 1},
            }
        ],
    }
    with pytest.raises(MalformedPayload):
        decode(json.dumps(batch).encode(), DetectionBatch)


def test_message_naming_another_device_is_refused():
    topics = Topics()
    payload = encode(State(device="cam-02", status=DeviceStatus.ONLINE))
    with pytest.raises(UnexpectedMessage):
        decode_agent_message(topics, topics.state("cam-01"), payload)


def test_command_on_agent_channel_is_refused():
    topics = Topics()
    with pytest.raises(UnexpectedMessage):
        decode_agent_message(topics, topics.cmd("cam-01"), encode(Rollback(device="cam-01")))


@given(st.integers(0, 999), st.binary(max_size=4096))
def test_chunks_round_trip(index, data):
    chunk = decode_chunk(encode_chunk(index, 1000, data))
    assert (chunk.index, chunk.total, chunk.data) == (index, 1000, data)


def test_corrupted_chunk_is_refused():
    frame = bytearray(encode_chunk(3, 10, b"hello world"))
    frame[-1] ^= 0xFF
    with pytest.raises(MalformedPayload):
        decode_chunk(bytes(frame))
    with pytest.raises(MalformedPayload):
        decode_chunk(b"XXXX" + bytes(frame[4:]))
    with pytest.raises(MalformedPayload):
        decode_chunk(b"EFC1")


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_garbage_chunks_raise_only_protocol_errors(payload):
    try:
        decode_chunk(payload)
    except ProtocolError:
        pass


@pytest.mark.parametrize("device", [123, None, ["cam-01"], {"id": "cam-01"}])
def test_device_that_is_not_a_string_is_an_invalid_device_id(device):
    with pytest.raises(InvalidDeviceId, match="device id must match"):
        decode(json.dumps(_state_dict(device=device)).encode(), State)


def test_refusals_carry_the_validators_words_without_pydantic_prefixes():
    with pytest.raises(UnsupportedVersion) as version:
        decode(json.dumps(_state_dict(v="2.0")).encode(), State)
    assert str(version.value) == "unsupported schema major version 2 (speaking 1)"
    with pytest.raises(InvalidDeviceId) as device:
        decode(json.dumps(_state_dict(device="CAM")).encode(), State)
    assert str(device.value) == "device id must match [a-z0-9-]{3,64}, got 'CAM'"


def test_errors_are_told_apart_by_pydantic_error_type():
    with pytest.raises(ValidationError) as version:
        State.model_validate_json(json.dumps(_state_dict(v="2.0")))
    with pytest.raises(ValidationError) as device:
        State.model_validate_json(json.dumps(_state_dict(device="CAM")))
    assert [e["type"] for e in version.value.errors()] == ["unsupported_version"]
    assert [e["type"] for e in device.value.errors()] == ["invalid_device_id"]


@pytest.mark.parametrize("v", ["1", "one.zero", "1.x", ""])
def test_version_that_is_not_major_minor_is_malformed(v):
    with pytest.raises(MalformedPayload):
        decode(json.dumps(_state_dict(v=v)).encode(), State)
