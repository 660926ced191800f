"""Message and detection ids: unique, valid on the wire, and in the order they were made."""

from __future__ import annotations

import time
import uuid

from protocol.messages import Detection, Envelope, new_id


def test_ids_are_uuid7_and_sort_in_the_order_they_were_made():
    earlier = [new_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_id()
    assert len(set(earlier)) == len(earlier)
    assert all(later > made for made in earlier)
    for made in (*earlier[:10], later):
        parsed = uuid.UUID(made)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert len(made) == 32 and made == parsed.hex
    # the leading 48 bits are the unix milliseconds of the making
    ms = int(later[:12], 16)
    assert abs(ms / 1000 - time.time()) < 5


def test_default_ids_on_the_wire_models_are_the_time_ordered_ones():
    envelope = Envelope(device="cam-1")
    assert uuid.UUID(envelope.id).version == 7
    box = {"x1": 0.1, "y1": 0.1, "x2": 0.2, "y2": 0.2}
    detection = Detection.model_validate(
        {"camera": "cam0", "label": "face", "score": 0.5, "box": box, "ts": time.time()}
    )
    assert uuid.UUID(detection.id).version == 7
