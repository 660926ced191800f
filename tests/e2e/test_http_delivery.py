"""A bundle delivered over HTTP range download to a real agent process, then detections flow."""

from __future__ import annotations

import pytest

from controller.demo.waiting import wait_until
from controller.fleet.deployments import HttpTransportUnavailable
from tests.e2e.conftest import FLEET_DEVICE

pytestmark = pytest.mark.e2e


def test_deploy_over_http_installs_the_bundle_and_detections_flow(kill_fleet, build_blazeface):
    fleet = kill_fleet
    controller, observer = fleet.controller, fleet.observer
    fleet.start_agent()
    observer.wait("agent online", lambda seen: any(s.status == "online" for s in seen.states))
    wait_until("device registered", lambda: fleet.device().get("online"))
    bundle = build_blazeface(version=1)
    response = fleet.http.post("/api/bundles", content=bundle.path.read_bytes())
    assert response.status_code == 201, response.text
    digest = response.json()["digest"]

    deployer = controller.deployer
    saved_url, deployer.public_url = deployer.public_url, None
    with pytest.raises(HttpTransportUnavailable):
        deployer.deploy(FLEET_DEVICE, digest, transport="http")
    # the address agents reach this controller's API on
    deployer.public_url = saved_url or (lambda: controller.api_url)
    info = deployer.deploy(FLEET_DEVICE, digest, transport="http")

    observer.wait("bundle running", lambda seen: observer.events("running", digest), 60)
    kinds = [e.kind for e in observer.seen.events if e.bundle == digest]
    assert kinds[0] == "deploy_offered"
    assert {"downloading", "verified", "probation", "running"} <= set(kinds), kinds
    assert "chunk_request" not in kinds
    progress = [e.progress for e in observer.events("downloading", digest)]
    # reported as the file grows, ending at the whole file
    assert len(progress) >= 2 and progress == sorted(progress) and progress[-1] == 1.0
    # not one byte of it went over MQTT
    assert controller.chunks.chunks_sent == 0
    wait_until(
        "deployment running",
        lambda: (found := deployer.get_by_cmd(info.cmd_id)) and found.status == "running",
    )

    # the agent had no model before this one, so every detection comes from it
    observer.wait("detections from it", lambda seen: seen.detections >= 1, 60)
    assert fleet.device()["active_digest"] == digest
    assert fleet.agent is not None and fleet.agent.poll() is None
