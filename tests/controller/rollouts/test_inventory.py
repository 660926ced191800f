"""Inventory over real databases: selectors, groups, tags, decommissioning, bundle references;
and the gates reading the agent's per-bundle statistics."""

from __future__ import annotations

import pytest

from controller.db import Device
from controller.rollouts import gates, inventory
from controller.rollouts.spec import Amount, GateSpec, RolloutSpec, Selector
from protocol.events import EventKind
from protocol.messages import BundleStats, CameraHealth, Event, Health


def test_selectors_match_what_devices_report_and_what_operators_say(fleet):
    old, new = fleet.add_bundle("face", 1), fleet.add_bundle("face", 2)
    a, b, c = fleet.add_devices(3, old)
    with fleet.sessions.begin() as session:
        session.get(Device, a).profile = "jetson-nano"
        session.get(Device, b).agent_version = "0.2.0"
        session.get(Device, c).runtimes = [
            {"key": "onnx", "available": True},
            {"key": "tensorrt", "available": False},
        ]
        session.get(Device, c).active_digest = new
        inventory.set_tags(session, a, ["lab", "north"], [])
        inventory.set_tags(session, b, ["lab"], [])
    fleet.set_online(b, False)
    with fleet.sessions.begin() as session:
        pick = lambda **kw: inventory.select_devices(session, Selector(**kw))  # noqa: E731
        assert pick() == [a, b, c]
        assert pick(tags=["lab"]) == [a, b]
        assert pick(tags=["lab", "north"]) == [a]
        assert pick(profile="jetson-nano") == [a]
        assert pick(agent_version="0.2.0") == [b]
        assert pick(runtime="onnx") == [c]
        assert pick(runtime="tensorrt") == []
        assert pick(bundle="face@2") == [c]
        assert pick(bundle=old[:8]) == [a, b]
        assert pick(online=False) == [b]
        assert pick(devices=[c, a]) == [a, c]
        assert pick(runtime="onnx", tags=["lab"]) == []
        assert pick(runtime="onnx", devices=[c], online=True) == [c]
        inventory.save_group(session, "lab", Selector(tags=["lab"]), 0.0)
        assert pick(group="lab", online=True) == [a]
        inventory.set_decommissioned(session, a, True)
        assert pick(group="lab") == [b]
        assert inventory.set_tags(session, b, ["x"], ["lab"]) == ["x"]
        assert pick(group="lab") == []
        with pytest.raises(inventory.UnknownGroup):
            pick(group="nope")
        with pytest.raises(inventory.InventoryError):
            inventory.save_group(session, "nested", Selector(group="lab"), 0.0)
        with pytest.raises(inventory.InventoryError):
            inventory.set_tags(session, b, ["no spaces"], [])
        with pytest.raises(inventory.UnknownDeviceRef):
            inventory.set_tags(session, "cam-none", ["x"], [])


def test_a_device_whose_reported_runtimes_are_not_a_list_matches_no_runtime(fleet):
    bundle = fleet.add_bundle("face", 1)
    a, b = fleet.add_devices(2, bundle)
    with fleet.sessions.begin() as session:
        session.get(Device, a).runtimes = {"onnx": True}  # not what an agent sends
        session.get(Device, b).runtimes = ["onnx", {"key": "onnx", "available": True}]
    with fleet.sessions.begin() as session:
        assert inventory.select_devices(session, Selector(runtime="onnx")) == [b]
        assert inventory.select_devices(session, Selector()) == [a, b]


def test_tags_a_device_declares_match_selectors_beside_the_operators(fleet):
    bundle = fleet.add_bundle("face", 1)
    a, b, c = fleet.add_devices(3, bundle)
    fleet.declare_tags(a, "site:north", "lab")
    fleet.declare_tags(b, "site:south")
    with fleet.sessions.begin() as session:
        inventory.set_tags(session, c, ["lab"], [])
        inventory.set_tags(session, b, ["canary"], [])
    with fleet.sessions.begin() as session:
        pick = lambda **kw: inventory.select_devices(session, Selector(**kw))  # noqa: E731
        assert pick(tags=["lab"]) == [a, c]
        assert pick(tags=["site:south", "canary"]) == [b]
        assert session.get(Device, a).declared_tags == ["lab", "site:north"]
    # the device changes its settings: the old declared tag stops matching; the Last Will
    # (no details) keeps what the device said while online
    fleet.declare_tags(a, "site:east")
    fleet.set_online(a, False)
    with fleet.sessions.begin() as session:
        pick = lambda **kw: inventory.select_devices(session, Selector(**kw))  # noqa: E731
        assert pick(tags=["lab"]) == [c]
        assert pick(tags=["site:east"]) == [a]


def test_bundle_references_name_at_version_or_a_unique_digest_prefix(fleet):
    one = fleet.add_bundle("face", 1)
    two = fleet.add_bundle("face", 2)
    with fleet.sessions() as session:
        assert inventory.resolve_bundle(session, "face@1") == one
        assert inventory.resolve_bundle(session, two[:6]) == two
        assert inventory.resolve_bundle(session, two.upper()[:10]) == two
        with pytest.raises(inventory.UnknownBundleRef):
            inventory.resolve_bundle(session, "face@3")
        with pytest.raises(inventory.InventoryError):
            inventory.resolve_bundle(session, "face")
        shared = next(i for i in range(1, 64) if one[:i] != two[:i]) - 1
        if shared >= 4:  # a prefix both digests share is ambiguous
            with pytest.raises(inventory.AmbiguousBundleRef):
                inventory.resolve_bundle(session, one[:shared])


def test_amounts_and_wave_sizes():
    assert Amount.parse("10%").of(1000) == 100
    assert Amount.parse("1%").of(3) == 1
    assert Amount.parse(" 5 ").of(3) == 3
    with pytest.raises(ValueError):
        Amount.parse("150%")
    with pytest.raises(ValueError):
        Amount.parse("five")
    waves = RolloutSpec.model_validate({"waves": ["1%", "10%", "50%", "100%"]})
    assert waves.wave_sizes(1000) == [10, 90, 400, 500]
    assert RolloutSpec.model_validate({"waves": ["1", "10%"]}).wave_sizes(5) == [1, 4]
    with pytest.raises(ValueError):
        GateSpec.model_validate({"name": "fps"})


def test_gates_prefer_the_agents_per_bundle_statistics(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    (device,) = fleet.add_devices(1, old)
    t0 = fleet.clock.now
    camera = CameraHealth(camera="cam0", fps_processed=25.0, inference_ms=10.0)

    def sample(ts: float, digest: str, fps: float, p95: float, score: float) -> None:
        stats = BundleStats(
            digest=digest, fps=fps, infer_ms_p95=p95, det_rate=0.5, mean_score=score
        )
        fleet._store(Health(device=device, cameras=(camera,), bundle_stats=stats, ts=ts))

    sample(t0 + 10, old, 30.0, 8.0, 0.80)
    sample(t0 + 50, old, 28.0, 9.0, 0.82)
    offered = t0 + 60
    fleet.clock.now = offered + 5
    fleet._store(Event(device=device, kind=EventKind.PROBATION, bundle=new))
    sample(offered + 20, new, 14.0, 30.0, 0.60)
    subject = gates.GateSubject(device, offered, old)
    with fleet.sessions() as session:
        fps = GateSpec(name="fps", min=0.8, window_s=60)
        assert gates.evaluate(session, fps, new, [subject], offered + 30).outcome == "waiting"
        verdict = gates.evaluate(session, fps, new, [subject], offered + 80)
        assert verdict.outcome == "breached" and verdict.reason == "gate:fps"
        assert verdict.numbers["old"] == 28.0 and verdict.numbers["new"] == 14.0
        p95 = GateSpec(name="inference_p95", max=2.0, window_s=60)
        assert gates.evaluate(session, p95, new, [subject], offered + 80).numbers["value"] > 3
        drift = GateSpec(name="score_drift", max=0.1, window_s=60)
        verdict = gates.evaluate(session, drift, new, [subject], offered + 80)
        assert verdict.outcome == "breached" and verdict.numbers["value"] == pytest.approx(0.22)
        rate = GateSpec(name="detection_rate", min=0.9, window_s=60)
        assert gates.evaluate(session, rate, new, [subject], offered + 80).outcome == "passed"
        assert gates.evaluate(session, fps, new, [], offered + 80).outcome == "passed"
        lost = gates.GateSubject("cam-none", offered, old)
        verdict = gates.evaluate(session, fps, new, [lost], offered + 80)
        assert verdict.outcome == "breached" and verdict.numbers["detail"] == "no_data"
