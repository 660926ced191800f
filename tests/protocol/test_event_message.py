"""The event message's kind and level are protocol enums; their wire values did not change."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from protocol.codec import decode, encode
from protocol.events import EventKind, EventLevel
from protocol.messages import Event


def test_kind_and_level_are_members_whether_given_as_members_or_values():
    by_member = Event(device="cam-a", kind=EventKind.ROLLED_BACK, level=EventLevel.WARNING)
    by_value = Event(device="cam-a", kind="rolled_back", level="warning")  # type: ignore[arg-type]
    for event in (by_member, by_value):
        assert event.kind is EventKind.ROLLED_BACK and event.level is EventLevel.WARNING


def test_the_wire_carries_the_plain_values_and_decodes_back_to_members():
    event = Event(device="cam-a", kind=EventKind.FAILED, reason="stalled")
    payload = encode(event)
    wire = json.loads(payload)
    assert (wire["kind"], wire["level"], wire["reason"]) == ("failed", "info", "stalled")
    decoded = decode(payload, Event)
    assert decoded == event and decoded.kind is EventKind.FAILED


def test_a_reason_the_enums_do_not_know_still_decodes():
    # a newer agent may send a reason this side has no member for
    event = decode(encode(Event(device="cam-a", kind="failed", reason="brand_new")), Event)  # type: ignore[arg-type]
    assert event.reason == "brand_new"


@pytest.mark.parametrize(("field", "value"), [("kind", "exploded"), ("level", "fatal")])
def test_an_unknown_kind_or_level_is_refused(field, value):
    fields = {"device": "cam-a", "kind": "log", field: value}
    with pytest.raises(ValidationError):
        Event(**fields)
