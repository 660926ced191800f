import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import InvalidDeviceId, UnknownTopic
from protocol.topics import Channel, Topics, validate_device_id

device_ids = st.from_regex(r"\A[a-z0-9-]{3,64}\Z")


@given(device_ids, st.sampled_from(list(Channel)))
def test_device_topics_round_trip(device_id, channel):
    topics = Topics()
    parsed = topics.parse(topics.device(device_id, channel))
    assert parsed.channel is channel
    assert parsed.device_id == device_id


@pytest.mark.parametrize(
    "bad",
    ["", "ab", "cam+1", "cam#", "cam/01", "CAM-01", "cam 01", "x" * 65, "cam\x00x", "cam-01\n"],
)
def test_bad_device_ids_are_refused(bad):
    with pytest.raises(InvalidDeviceId):
        validate_device_id(bad)
    with pytest.raises(InvalidDeviceId):
        Topics().state(bad)


def test_topic_injection_through_an_id_cannot_widen_a_subscription():
    with pytest.raises(InvalidDeviceId):
        Topics().cmd("+")
    with pytest.raises(InvalidDeviceId):
        Topics().cmd("a/b/#")


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/dev/cam-01/state",
        "edgefleet/v1/dev/cam-01/nope",
        "edgefleet/v1/dev/cam-01/state/extra",
        "edgefleet/v1/bundle/abc/chunk",
        "edgefleet/v1/bundle/" + "a" * 64 + "/other",
        "edgefleet/v1",
    ],
)
def test_unknown_topics_are_refused(topic):
    with pytest.raises(UnknownTopic):
        Topics().parse(topic)


def test_bundle_chunk_topic_round_trip():
    topics = Topics("fleet/x")
    digest = "0123456789abcdef" * 4
    assert topics.parse(topics.bundle_chunks(digest)).digest == digest


def test_prefix_with_wildcards_is_refused():
    with pytest.raises(ValueError):
        Topics("edgefleet/+")
