"""The rollout engine over real databases: waves, rate, thresholds, timeouts, halts, reverts,
resuming after an interrupted tick, and devices that were offline during their wave."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from controller.db import Deployment
from controller.rollouts import views
from controller.rollouts.desired import Reconciler
from controller.rollouts.spec import RolloutSpec, Selector
from controller.rollouts.states import MemberState, RolloutState
from protocol.messages import Deploy, Rollback


def spec(**kw) -> RolloutSpec:
    return RolloutSpec.model_validate(kw)


def rollout(fleet, rollout_id: str) -> views.RolloutView:
    with fleet.sessions() as session:
        return views.get_rollout(session, rollout_id)


def members(fleet, rollout_id: str) -> dict[str, views.MemberView]:
    with fleet.sessions() as session:
        return {m.device: m for m in views.members(session, rollout_id)}


def reasons(fleet, rollout_id: str) -> list[str]:
    with fleet.sessions() as session:
        return [e.reason for e in views.timeline(session, rollout_id)]


def test_waves_follow_the_rate_and_each_wave_opens_only_after_the_previous_passed(fleet):
    old, new = fleet.add_bundle("face", 1), fleet.add_bundle("face", 2)
    fleet.add_devices(100, old)
    rid = fleet.engine.create(
        "r1", "face@2", Selector(), spec(waves=["1", "10%", "50%", "100%"], rate_per_min=30)
    )
    offered_at: dict[str, float] = {}
    for _ in range(400):
        fleet.engine.tick(fleet.clock.now)
        for command in list(fleet.recorder.sent):
            assert isinstance(command, Deploy)
            assert command.device not in offered_at, "a device was offered twice"
            offered_at[command.device] = fleet.clock.now
        fleet.agents_answer()
        fleet.clock.now += 1.0
        if rollout(fleet, rid).state == "completed":
            break
    view = rollout(fleet, rid)
    assert view.state == RolloutState.COMPLETED.value, view
    assert [w.total for w in view.waves] == [1, 9, 40, 50]
    assert all(d.active == new for d in fleet.devices.values())
    times = sorted(offered_at.values())
    assert len(times) == 100
    # 30 per minute: never more than 30 offers in any 60 s window
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 60) <= 30
    by_wave: dict[int, list[float]] = {}
    for device, member in members(fleet, rid).items():
        by_wave.setdefault(member.wave, []).append(offered_at[device])
    for wave in range(1, 4):
        assert min(by_wave[wave]) > max(by_wave[wave - 1])
    assert "wave_started:3" in reasons(fleet, rid)


def test_a_rate_that_grows_after_successes_offers_faster(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    fleet.add_devices(60, old)
    rid = fleet.engine.create(
        "grow",
        "face@2",
        Selector(),
        spec(waves=["100%"], rate_per_min=6, growth_factor=4, growth_every=2, jitter=0.2),
    )
    fleet.run(120)
    done = sum(1 for m in members(fleet, rid).values() if m.state == "succeeded")
    # 6/min flat would update 12 in two minutes
    assert done > 30


def test_no_more_devices_in_flight_than_the_rollout_allows(fleet):
    old, new = fleet.add_bundle("face", 1), fleet.add_bundle("face", 2)
    fleet.add_devices(12, old)
    rid = fleet.engine.create(
        "cap", "face@2", Selector(), spec(waves=["100%"], rate_per_min=6000, max_in_flight=3)
    )
    most = 0
    for _ in range(60):
        fleet.engine.tick(fleet.clock.now)
        offered = [m for m in members(fleet, rid).values() if m.state == "offered"]
        assert len(offered) <= 3
        most = max(most, len(offered))
        fleet.agents_answer()
        fleet.clock.now += 1.0
        if rollout(fleet, rid).state == "completed":
            break
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value
    assert most == 3  # the cap was reached, and it held
    assert all(d.active == new for d in fleet.devices.values())


def test_a_failing_canary_halts_and_the_others_never_get_the_bundle(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    ids = fleet.add_devices(3, old, behaviour="fail")
    rid = fleet.engine.create("c", "face@2", Selector(), spec(waves=["1", "100%"]))
    fleet.run(30)
    view = rollout(fleet, rid)
    assert view.state == RolloutState.HALTED.value
    assert view.reason == "threshold:failures"
    assert sum(len(v) for v in fleet.deploys.values()) == 1
    states = sorted(m.state for m in members(fleet, rid).values())
    assert states == ["failed", "queued", "queued"]
    assert all(fleet.devices[d].active == old for d in ids)


def test_thresholds_need_the_minimum_finished_before_tripping(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    bad = fleet.add_devices(1, old, prefix="bad", behaviour="fail")
    fleet.add_devices(9, old, prefix="good")
    rid = fleet.engine.create(
        "t",
        "face@2",
        Selector(),
        spec(
            waves=["100%"],
            failure_threshold="20%",
            min_finished=5,
            success_threshold="80%",
            rate_per_min=600,
        ),
    )
    fleet.run(60)
    view = rollout(fleet, rid)
    assert view.state == RolloutState.COMPLETED.value, reasons(fleet, rid)
    assert members(fleet, rid)[bad[0]].state == "failed"


def test_a_stage_timeout_fails_the_device_and_closes_its_deployment(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    (device,) = fleet.add_devices(1, old, behaviour="stall")
    rid = fleet.engine.create(
        "to", "face@2", Selector(), spec(waves=["100%"], timeouts={"offered_s": 30})
    )
    fleet.run(45)
    member = members(fleet, rid)[device]
    assert member.state == "failed" and member.reason == "timeout:offered"
    with fleet.sessions() as session:
        row = session.scalar(select(Deployment).where(Deployment.cmd_id == member.cmd_id))
    assert row.status == "failed" and row.reason == "timeout:offered"
    assert rollout(fleet, rid).reason == "threshold:failures"


def test_abort_with_revert_brings_every_touched_device_back(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    ids = fleet.add_devices(40, old)
    rid = fleet.engine.create(
        "ab", "face@2", Selector(), spec(waves=["5", "100%"], rate_per_min=600)
    )
    fleet.run(6)
    touched = [d for d in ids if fleet.devices[d].active == new]
    assert 5 <= len(touched) < 40
    fleet.engine.abort(rid, revert=True)
    fleet.run(10)
    view = rollout(fleet, rid)
    assert view.state == RolloutState.REVERTED.value, reasons(fleet, rid)
    assert all(fleet.devices[d].active == old for d in ids)
    states = {m.state for m in members(fleet, rid).values()}
    assert states <= {MemberState.REVERTED.value, MemberState.QUEUED.value}
    targets = {t.device: t for t in Reconciler(fleet.sessions, fleet.deployer).targets()}
    assert all(targets[d].bundle == old for d in touched)
    assert "aborted:revert" in reasons(fleet, rid)


def test_a_revert_to_a_bundle_the_controller_never_had_uses_the_devices_own_slot(fleet):
    # devices provisioned with a bundle that was never uploaded to this controller
    provisioned = "ab" * 32
    fleet.bundles[provisioned] = ("factory", 1)
    fleet.add_bundle("face", 2)
    ids = fleet.add_devices(10, provisioned)
    rid = fleet.engine.create("fb", "face@2", Selector(), spec(waves=["100%"], rate_per_min=600))
    fleet.run(4)
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value, reasons(fleet, rid)
    fleet.engine.abort(rid, revert=True)
    fleet.run(6)
    assert rollout(fleet, rid).state == RolloutState.REVERTED.value, reasons(fleet, rid)
    assert all(fleet.devices[d].active == provisioned for d in ids)
    assert {m.state for m in members(fleet, rid).values()} == {MemberState.REVERTED.value}
    # nothing left to converge to: the reconciler never deploys the rollout's bundle again
    assert Reconciler(fleet.sessions, fleet.deployer).targets() == []


def test_a_halt_on_a_rollout_that_says_revert_reverts_the_canary(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    fleet.add_devices(1, old, prefix="canary", behaviour="ok")
    rid = fleet.engine.create(
        "g",
        "face@2",
        Selector(),
        spec(
            waves=["1", "100%"],
            on_failure="revert",
            success_threshold="100%",
            gates=[{"name": "fps", "min": 0.8, "window_s": 20}],
        ),
    )
    canary = "canary-0000"
    for _ in range(25):  # the old bundle's history: 30 fps
        fleet.health(canary, fps=30.0)
        fleet.clock.now += 1
    fleet.devices[canary].fps = 6.0  # the new bundle is much slower
    for _ in range(40):
        fleet.engine.tick(fleet.clock.now)
        fleet.agents_answer()
        fleet.health(canary)
        fleet.clock.now += 1
    timeline = reasons(fleet, rid)
    assert "gate:fps" in timeline, timeline
    with fleet.sessions() as session:
        halted = next(e for e in views.timeline(session, rid) if e.reason == "gate:fps")
    assert halted.data["old"] == 30.0 and halted.data["new"] == 6.0
    assert halted.data["value"] < 0.8
    assert rollout(fleet, rid).state == RolloutState.REVERTED.value
    assert fleet.devices[canary].active == old


def test_a_gate_that_holds_lets_the_wave_pass(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    fleet.add_devices(2, old)
    rid = fleet.engine.create(
        "g2",
        "face@2",
        Selector(),
        spec(waves=["1", "100%"], gates=[{"name": "fps", "min": 0.8, "window_s": 10}]),
    )
    for _ in range(12):
        for d in fleet.devices:
            fleet.health(d)
        fleet.clock.now += 1
    for _ in range(40):
        fleet.engine.tick(fleet.clock.now)
        fleet.agents_answer()
        for d in fleet.devices:
            fleet.health(d)
        fleet.clock.now += 1
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value, reasons(fleet, rid)


def test_an_interrupted_tick_resumes_without_offering_twice_or_forgetting(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    ids = fleet.add_devices(20, old)
    rid = fleet.engine.create("k", "face@2", Selector(), spec(waves=["100%"], rate_per_min=600))
    fleet.engine.tick(fleet.clock.now)
    fleet.agents_answer()
    fleet.clock.now += 1
    # killed after the offers were committed, before any was sent
    fleet.engine._advance(rid, fleet.clock.now)
    offered = [m for m in members(fleet, rid).values() if m.state == "offered" and m.cmd_id is None]
    assert offered
    # killed after one deployment was sent, before it was recorded
    fleet.deployer.deploy(offered[0].device, new)
    fleet.agents_answer()
    restarted = fleet.new_engine()
    fleet.run(30, engine=restarted)
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value
    assert all(fleet.devices[d].active == new for d in ids)
    assert all(len(fleet.deploys[d]) == 1 for d in ids), fleet.deploys


def test_a_device_offline_during_its_wave_converges_when_it_returns(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    ids = fleet.add_devices(10, old)
    fleet.set_online(ids[3], False)
    rid = fleet.engine.create("off", "face@2", Selector(), spec(waves=["100%"], rate_per_min=600))
    fleet.run(10)
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value
    assert members(fleet, rid)[ids[3]].state == MemberState.DEFERRED.value
    assert fleet.devices[ids[3]].active == old
    fleet.set_online(ids[3], True)
    fleet.run(5)
    assert fleet.devices[ids[3]].active == new
    assert members(fleet, rid)[ids[3]].state == MemberState.SUCCEEDED.value


def test_devices_that_newly_match_join_the_running_rollout(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    fleet.add_devices(4, old)
    rid = fleet.engine.create(
        "join", "face@2", Selector(), spec(waves=["1", "100%"], rate_per_min=6)
    )
    fleet.run(5)
    (late,) = fleet.add_devices(1, old, prefix="late")
    fleet.run(120)
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value
    assert fleet.devices[late].active == new


def test_pause_resume_approval_and_scheduled_start(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    fleet.add_devices(4, old)
    start = fleet.clock.now + 100
    rid = fleet.engine.create(
        "p", "face@2", Selector(), spec(waves=["1", "100%"], approval=True), start_at=start
    )
    fleet.run(50)
    assert rollout(fleet, rid).state == RolloutState.SCHEDULED.value
    assert not fleet.deploys
    fleet.run(60)
    assert rollout(fleet, rid).state == RolloutState.WAITING_APPROVAL.value
    assert sum(len(v) for v in fleet.deploys.values()) == 1
    fleet.engine.approve(rid)
    fleet.engine.pause(rid)
    fleet.run(20)
    assert sum(len(v) for v in fleet.deploys.values()) == 1
    fleet.engine.resume(rid)
    fleet.run(20)
    assert rollout(fleet, rid).state == RolloutState.COMPLETED.value
    assert sum(len(v) for v in fleet.deploys.values()) == 4
    assert reasons(fleet, rid)[:2] == ["created", "started"]


def test_a_locally_reverted_device_shows_its_drift(fleet):
    old = fleet.add_bundle("face", 1)
    fleet.add_bundle("face", 2)
    (device,) = fleet.add_devices(1, old)
    fleet.engine.create("d", "face@2", Selector(), spec(waves=["100%"]))
    fleet.run(5)
    reconciler = Reconciler(fleet.sessions, fleet.deployer)
    (target,) = reconciler.targets(device)
    assert target.converged and not target.drift
    fleet.devices[device].active = old  # the agent went back on its own
    fleet.set_online(device, True)
    (target,) = reconciler.targets(device)
    assert target.drift and target.active == old
    fleet.run(5)
    assert fleet.devices[device].active == old, "drift is shown, not fought"


def test_cancel_stops_offering_and_keeps_what_was_done(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    ids = fleet.add_devices(10, old)
    rid = fleet.engine.create("x", "face@2", Selector(), spec(waves=["100%"], rate_per_min=60))
    fleet.run(3)
    fleet.engine.cancel(rid)
    fleet.run(20)
    updated = [d for d in ids if fleet.devices[d].active == new]
    assert 1 <= len(updated) <= 4
    assert rollout(fleet, rid).state == RolloutState.CANCELLED.value
    assert not any(isinstance(c, Rollback) for c in fleet.recorder.sent)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_thousand_devices_in_waves_then_abort_with_revert(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    ids = fleet.add_devices(1000, old)
    rid = fleet.engine.create(
        "big",
        "face@2",
        Selector(),
        spec(
            waves=["1%", "10%", "50%", "100%"],
            rate_per_min=3000,
            failure_threshold="5%",
            min_finished=10,
        ),
    )
    per_tick: list[int] = []
    for _ in range(200):
        if rollout(fleet, rid).wave == 3:
            break
        fleet.engine.tick(fleet.clock.now)
        per_tick.append(len(fleet.recorder.sent))
        fleet.agents_answer()
        fleet.clock.now += 1.0
    # 3,000 a minute: 50 a second at most
    assert max(per_tick) <= 51
    view = rollout(fleet, rid)
    assert [w.total for w in view.waves] == [10, 90, 400, 500]
    assert view.waves[1].counts == {"succeeded": 90}
    fleet.run(3)
    touched = [d for d in ids if fleet.devices[d].active == new]
    assert 500 < len(touched) < 1000
    fleet.engine.abort(rid, revert=True)
    fleet.run(5)
    assert rollout(fleet, rid).state == RolloutState.REVERTED.value
    assert all(fleet.devices[d].active == old for d in ids)


def test_a_plain_deployment_never_stays_open_past_its_stage_timeout(fleet):
    old = fleet.add_bundle("face", 1)
    new = fleet.add_bundle("face", 2)
    (device,) = fleet.add_devices(1, old, behaviour="stall")
    info = fleet.deployer.deploy(device, new)
    fleet.agents_answer()  # acknowledged, then nothing
    fleet.clock.now += 299
    fleet.engine.tick()
    assert fleet.deployer.get_by_cmd(info.cmd_id).status == "accepted"
    fleet.clock.now += 2
    fleet.engine.tick()
    found = fleet.deployer.get_by_cmd(info.cmd_id)
    assert (found.status, found.reason) == ("failed", "timeout:offered")
