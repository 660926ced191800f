"""SIGKILL the agent at each install stage, start it again: it always ends on a verified bundle.

The agent kills itself through its fault point (`EDGEFLEET_AGENT_FAULT`), so each kill lands
exactly at the stage named; the controller, broker and bundle are real.
"""

from __future__ import annotations

import pytest

from controller.demo.waiting import wait_until
from tests.e2e.conftest import KillFleet, slot_files_intact

pytestmark = pytest.mark.e2e

# unpack: after the first file is in its slot; the download stage is the resume test below
STAGES = ["unpack", "switch", "probation"]


def _start_on(fleet: KillFleet, digest: str, fault: str | None = None, since: int = 0) -> None:
    fleet.start_agent(fault)
    fleet.observer.wait(
        f"agent online on {digest[:12]}",
        lambda seen: any(
            s.status == "online" and s.active is not None and s.active.digest == digest
            for s in seen.states[since:]
        ),
    )
    # the controller takes deployments only for devices its ingest has stored
    wait_until("controller knows the agent", lambda: fleet.device().get("online"))


def _ends_running(fleet: KillFleet, digest: str, since: int, detections: int) -> None:
    """The agent committed `digest`, the controller shows it, and detections flow on it."""
    obs = fleet.observer
    obs.wait("running event", lambda seen: fleet_events(seen, "running", digest, since), 90)
    _frames_flow(obs, detections)
    wait_until("controller shows it", lambda: fleet.device().get("active_digest") == digest)
    assert fleet.device()["online"] is True
    _on_committed(fleet, digest)


def _on_committed(fleet: KillFleet, digest: str) -> None:
    """The store's pointer names `digest`, committed, and its slot's files are intact."""
    pointer, current = fleet.store.pointer(), fleet.store.current()
    assert pointer is not None and current is not None
    assert (pointer.digest, pointer.state) == (digest, "committed")
    assert slot_files_intact(current)
    assert fleet.agent is not None and fleet.agent.poll() is None


def _frames_flow(obs, detections: int) -> None:
    """Frames go through the model, and detections (one per track, so few) reach the broker
    after the agent's last start (`detections` were seen before it)."""
    frames = obs.seen.frames_processed
    obs.wait(
        "frames and detections",
        lambda seen: seen.frames_processed >= frames + 5 and seen.detections > detections,
        30,
    )


def fleet_events(seen, kind, digest, since):
    return [e for e in seen.events[since:] if e.kind == kind and e.bundle == digest]


@pytest.mark.parametrize("fault", STAGES)
def test_killed_at_each_install_stage_the_agent_comes_back_on_a_verified_bundle(
    kill_fleet, build_blazeface, fault
):
    fleet = kill_fleet
    old = fleet.preinstall(build_blazeface(version=1).path)
    _start_on(fleet, old.digest, fault=fault)
    new = build_blazeface(version=2)
    fleet.deploy(new.path)
    fleet.wait_killed()
    # nothing half-done is live: the pointer names a slot whose files match its manifest
    assert slot_files_intact(fleet.store.current())

    since, detections = len(fleet.observer.seen.events), fleet.observer.seen.detections
    fleet.start_agent()
    _ends_running(fleet, new.digest, since, detections)
    if fault == "probation":
        # the kill cost one probation attempt; the second start passed it
        assert fleet_events(fleet.observer.seen, "probation", new.digest, since)
        assert (
            "attempt 2 of 2"
            in fleet_events(fleet.observer.seen, "probation", new.digest, 0)[-1].message
        )


def test_killed_mid_download_it_resumes_asking_only_for_the_missing_chunks(
    kill_fleet, build_blazeface
):
    fleet = kill_fleet
    old = fleet.preinstall(build_blazeface(version=1).path)
    _start_on(fleet, old.digest, fault="download:6")
    new = build_blazeface(version=2)
    fleet.deploy(new.path)
    fleet.wait_killed()

    obs = fleet.observer
    since_events = len(obs.seen.events)
    detections = obs.seen.detections
    fleet.start_agent()

    def after_resume(seen):
        """Events from the resumed event on: the outbox may replay the killed run's own
        events before the new run's first one."""
        for index in range(since_events, len(seen.events)):
            event = seen.events[index]
            if event.kind == "downloading" and event.message.startswith("resumed"):
                return seen.events[index:]
        return []

    resumed = obs.wait("resumed download", after_resume)[0]
    assert resumed.bundle == new.digest
    total = -(-new.size // (16 * 1024))
    on_disk = round(resumed.progress * total)
    assert 0 < on_disk < total

    def requests_since_restart(seen):
        # chunk requests skip the outbox (a stale one is never replayed), so every one seen
        # after the restart is the new run's own, and it may overtake the queued events
        return [e for e in seen.events[since_events:] if e.kind == "chunk_request"]

    obs.wait("chunk request after the resume", requests_since_restart)
    _ends_running(fleet, new.digest, since_events, detections)
    requests = requests_since_restart(obs.seen)
    asked = [{i for r in e.missing for i in range(r.start, r.end + 1)} for e in requests]
    # the first asks for exactly what was not on disk; any later one (a stall) for no more
    assert asked[0] == set(range(on_disk, total))
    assert all(later <= asked[0] for later in asked[1:])


def test_a_bundle_that_crashes_every_probation_is_reverted_after_the_max_attempts(
    kill_fleet, build_blazeface
):
    fleet = kill_fleet
    old = fleet.preinstall(build_blazeface(version=1).path)
    _start_on(fleet, old.digest, fault="probation")
    new = build_blazeface(version=2)
    fleet.deploy(new.path)
    fleet.wait_killed()  # attempt 1, in the install
    fleet.start_agent(fault="probation")
    fleet.wait_killed()  # attempt 2, on restart
    assert fleet.store.pointer().attempts == 2

    since, detections = len(fleet.observer.seen.events), fleet.observer.seen.detections
    # still armed: only a revert that never loads the bad bundle again keeps it alive
    fleet.start_agent(fault="probation")
    obs = fleet.observer
    rolled = obs.wait(
        "rolled_back", lambda seen: fleet_events(seen, "rolled_back", new.digest, since)
    )[0]
    assert rolled.reason == "probation_crashes"
    failed = fleet_events(obs.seen, "failed", new.digest, since)
    assert failed and failed[0].reason == "probation_crashes"
    _frames_flow(obs, detections)
    wait_until(
        "controller shows the old bundle", lambda: fleet.device().get("active_digest") == old.digest
    )
    _on_committed(fleet, old.digest)


def test_killed_as_a_deploy_arrives_the_broker_delivers_it_again_and_it_completes(
    kill_fleet, build_blazeface
):
    """Killed before the offer is on disk: the command was not acknowledged to the broker, so
    the persistent session delivers it again and the deployment reaches `running`."""
    fleet = kill_fleet
    old = fleet.preinstall(build_blazeface(version=1).path)
    _start_on(fleet, old.digest, fault="offer")
    new = build_blazeface(version=2)
    fleet.deploy(new.path)
    fleet.wait_killed()
    assert not list((fleet.agent_dir / "downloads").glob("*.offer.json"))

    since, detections = len(fleet.observer.seen.events), fleet.observer.seen.detections
    fleet.start_agent()
    _ends_running(fleet, new.digest, since, detections)

    def deployment_status() -> str:
        found = fleet.http.get("/api/deployments").json()
        return next((d["status"] for d in found if d["bundle"] == new.digest), "")

    wait_until("the deployment is running", lambda: deployment_status() == "running")
