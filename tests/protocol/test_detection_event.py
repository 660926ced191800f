"""Detections carry their track event; messages from agents before tracking still decode."""

from __future__ import annotations

import json

import pytest

from protocol.codec import decode, encode
from protocol.errors import MalformedPayload
from protocol.messages import Box, Detection, DetectionBatch


def batch_json(**detection_fields) -> bytes:
    det = {"camera": "cam0", "label": "face", "score": 0.9, "ts": 1.0}
    det["box"] = {"x1": 0.1, "y1": 0.1, "x2": 0.2, "y2": 0.2}
    det.update(detection_fields)
    return json.dumps(
        {
            "v": "1.0",
            "type": "det",
            "id": "abcdef012345",
            "ts": 1.0,
            "device": "cam-01",
            "detections": [det],
        }
    ).encode()


def test_a_detection_without_event_reads_as_an_update():
    batch = decode(batch_json(), DetectionBatch)
    assert batch.detections[0].event == "update"


@pytest.mark.parametrize("kind", ["start", "update", "end"])
def test_track_events_round_trip(kind):
    det = Detection(
        camera="cam0",
        track_id=7,
        event=kind,
        label="face",
        score=0.5,
        box=Box(x1=0.1, y1=0.1, x2=0.2, y2=0.2),
        ts=2.0,
    )
    batch = DetectionBatch(device="cam-01", detections=(det,))
    assert decode(encode(batch), DetectionBatch).detections[0] == det


def test_an_unknown_event_kind_is_refused():
    with pytest.raises(MalformedPayload):
        decode(batch_json(event="vanished"), DetectionBatch)
