"""Rollouts end to end through the REST API: a started controller (its scheduler ticking), the
real broker, and fake agents that answer deploys and rollbacks over MQTT."""

from __future__ import annotations

from controller.demo.waiting import wait_until
from protocol.messages import RestartPipeline, SetConfig


def test_a_failing_canary_halts_and_the_other_two_never_get_the_bundle(api_client, failing_fleet3):
    agents, _infos = failing_fleet3
    for i, agent in enumerate(agents):
        r = api_client.post(
            f"/api/devices/{agent.agent.device}/tags", json={"add": ["lab", f"n{i}"]}
        )
        assert r.status_code == 200, r.text
    assert api_client.put("/api/groups/lab", json={"tags": ["lab"]}).status_code == 200
    assert api_client.get("/api/groups/lab").json()["devices"] == ["cam-0", "cam-1", "cam-2"]
    body = {
        "name": "canary",
        "bundle": "face@2",
        "selector": {"group": "lab"},
        "spec": {"waves": ["1", "100%"], "rate_per_min": 600},
    }
    one = api_client.post("/api/rollouts", json=body)
    assert one.status_code == 201, one.text
    rid = one.json()["id"]
    wait_until("halt", lambda: api_client.get(f"/api/rollouts/{rid}").json()["state"] == "halted")
    shown = api_client.get(f"/api/rollouts/{rid}").json()
    assert shown["reason"] == "threshold:failures"
    timeline = api_client.get(f"/api/rollouts/{rid}/timeline").json()
    assert [e["reason"] for e in timeline][:3] == ["created", "started", "threshold:failures"]
    assert sorted(len(a.deploys()) for a in agents) == [0, 0, 1]
    members = api_client.get(f"/api/rollouts/{rid}/devices").json()
    assert sorted(m["state"] for m in members) == ["failed", "queued", "queued"]


def test_canary_then_the_rest_then_abort_with_revert_brings_them_back(api_client, fleet3):
    agents, infos = fleet3
    body = {
        "name": "good",
        "bundle": infos[2].digest[:10],
        "selector": {"devices": ["cam-1", "cam-2"]},
        "spec": {"waves": ["1", "100%"], "rate_per_min": 600},
    }
    created = api_client.post("/api/rollouts", json=body)
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    wait_until(
        "completed", lambda: api_client.get(f"/api/rollouts/{rid}").json()["state"] == "completed"
    )
    assert [len(a.deploys()) for a in agents] == [0, 1, 1]
    waves = api_client.get(f"/api/rollouts/{rid}").json()["waves"]
    assert [(w["total"], w["counts"]) for w in waves] == [
        (1, {"succeeded": 1}),
        (1, {"succeeded": 1}),
    ]
    assert api_client.post(f"/api/rollouts/{rid}/pause").status_code == 409
    aborted = api_client.post(f"/api/rollouts/{rid}/abort", json={"revert": True})
    assert aborted.status_code == 200, aborted.text
    wait_until(
        "reverted", lambda: api_client.get(f"/api/rollouts/{rid}").json()["state"] == "reverted"
    )
    assert all(a.active.digest == infos[1].digest for a in agents)
    targets = api_client.get("/api/targets").json()
    assert {t["device"]: t["bundle"] for t in targets} == {
        "cam-1": infos[1].digest,
        "cam-2": infos[1].digest,
    }
    assert all(t["converged"] for t in targets)


def test_commands_to_a_device_and_to_a_group(api_client, fleet3):
    agents, _ = fleet3
    r = api_client.post("/api/devices/cam-1/restart-pipeline")
    assert r.status_code == 202, r.text
    assert r.json()[0]["device"] == "cam-1" and r.json()[0]["cmd_id"]
    api_client.post("/api/devices/cam-2/tags", json={"add": ["night"]})
    api_client.put("/api/groups/night", json={"tags": ["night"]})
    r = api_client.post("/api/groups/night/set-config", json={"config": {"log_level": "debug"}})
    assert r.status_code == 202, r.text
    assert [s["device"] for s in r.json()] == ["cam-2"]
    wait_until(
        "restart received", lambda: any(isinstance(c, RestartPipeline) for c in agents[1].received)
    )
    wait_until("config received", lambda: any(isinstance(c, SetConfig) for c in agents[2].received))
    assert api_client.post("/api/devices/cam-9/rollback").status_code == 404
    assert api_client.post("/api/groups/none/rollback").status_code == 404


def test_bad_requests_get_reason_codes(api_client, fleet3):
    r = api_client.post("/api/rollouts", json={"name": "x", "bundle": "face@9"})
    assert r.status_code == 404 and r.json()["detail"]["reason"] == "unknown_bundle"
    r = api_client.post(
        "/api/rollouts", json={"name": "x", "bundle": "face@2", "selector": {"tags": ["nope"]}}
    )
    assert r.status_code == 422 and r.json()["detail"]["reason"] == "no_devices"
    r = api_client.post(
        "/api/rollouts", json={"name": "x", "bundle": "face@2", "spec": {"waves": ["1x"]}}
    )
    assert r.status_code == 422
    assert api_client.get("/api/rollouts/nope").status_code == 404
    assert api_client.put("/api/groups/Bad Name", json={}).status_code == 422
    r = api_client.post("/api/devices/cam-1/tags", json={"add": ["bad tag!"]})
    assert r.status_code == 422 and r.json()["detail"]["reason"] == "invalid"
    assert api_client.get("/api/bundle-refs/face@1").json()["digest"]
    r = api_client.post("/api/devices/cam-1/decommission")
    assert r.json()["decommissioned"] is True
    body = {"name": "y", "bundle": "face@2", "selector": {"devices": ["cam-1"]}}
    assert api_client.post("/api/rollouts", json=body).status_code == 422
