"""The fleet simulator: simulated agents take real deployments from a real controller through a
real mosquitto, and its knobs make them fail the way they say."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sqlalchemy import select

from controller.db import Deployment, Device
from controller.demo.sim.fleet import SimFleet
from controller.demo.sim.knobs import BundleBehaviour, SimKnobs
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from ota.trust import TrustStore
from ota.trust_file import save_trust_store

FAST = dict(probation_s=0.5, health_interval_s=0.5, chunk_request_timeout_s=0.5)


@pytest.fixture
def trust(release_key):
    """The release key the bundles here are signed with (tests/controller's own key)."""
    return TrustStore.from_keys([release_key.public_key()])


@pytest.fixture
def controller(tmp_path, mosquitto, trust):
    trust_path = tmp_path / "controller-trust.json"
    save_trust_store(trust, trust_path)
    settings = ControllerSettings(
        data_dir=tmp_path / "controller",
        mqtt=MqttSettings(port=mosquitto.port, client_id="sim-test-controller"),
        http=HttpSettings(port=0),
        trust_path=trust_path,
        chunk_size=16 * 1024,
    )
    started = Controller(settings).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def bundles(build_blazeface):
    return build_blazeface(version=1), build_blazeface(version=2)


def _fleet(mosquitto, trust, tmp_path, first, devices, **knobs):
    return SimFleet(
        devices,
        port=mosquitto.port,
        trust=trust,
        knobs=SimKnobs(**{**FAST, **knobs}),
        workdir=tmp_path / "sim",
        installed=first.path,
    )


def _known(controller, devices: int, digest: str) -> None:
    def ready() -> bool:
        with controller.sessions() as session:
            rows = session.scalars(select(Device).where(Device.online.is_(True))).all()
        return sum(1 for r in rows if r.active_digest == digest) >= devices

    _wait(ready, 60, "the controller to know every simulated device")


def _statuses(controller) -> Counter[str]:
    with controller.sessions() as session:
        return Counter(session.scalars(select(Deployment.status)).all())


def _wait(check, timeout: float, what: str) -> None:
    from controller.demo.waiting import wait_until

    wait_until(what, check, timeout, interval=0.1)


def _deploy_all(controller, fleet, built) -> None:
    info = controller.bundles.add_file(built.path)
    for device in fleet.devices:
        controller.deployer.deploy(device.id, info.digest, transport="mqtt")


def test_simulated_devices_complete_a_real_deploy(controller, mosquitto, trust, tmp_path, bundles):
    first, second = bundles
    with _fleet(mosquitto, trust, tmp_path, first, 12) as fleet:
        _known(controller, 12, first.digest)
        _deploy_all(controller, fleet, second)
        _wait(lambda: _statuses(controller)["running"] == 12, 90, "12 deployments running")
        assert fleet.settled_on(second.digest) == 12
        _known(controller, 12, second.digest)  # their retained state says so too
        # the real verifier ran once per distinct bundle; each device hashed its own copy
        assert fleet.counters.verifier_runs == 2
        assert fleet.counters.verified == 12
        stats = fleet.call(lambda: fleet.devices[0].bundle_stats())
        assert stats is not None and stats.digest == second.digest and stats.fps > 0
        # each device's own chunks landed, and nothing of the download stayed behind
        assert fleet.counters.chunks == 12 * -(-second.path.stat().st_size // (16 * 1024))
        assert not list((tmp_path / "sim").rglob("*.part"))


def test_lossy_slow_and_vanishing_devices_still_get_there(
    controller, mosquitto, trust, tmp_path, bundles
):
    first, second = bundles
    knobs = dict(loss=0.1, slow_fraction=0.25, link_mb_s=4.0, offline_mid_download=0.5)
    with _fleet(mosquitto, trust, tmp_path, first, 8, offline_s=1.0, **knobs) as fleet:
        _known(controller, 8, first.digest)
        _deploy_all(controller, fleet, second)
        _wait(lambda: _statuses(controller)["running"] == 8, 120, "8 deployments running")
        counters = fleet.counters
        assert counters.dropped_chunks > 0 and counters.offline > 0
        assert counters.chunk_requests > 8  # the lost chunks were asked for again
        assert sum(d.slow for d in fleet.devices) == 2


def test_a_bundle_that_fails_probation_is_rolled_back_everywhere(
    controller, mosquitto, trust, tmp_path, bundles
):
    first, second = bundles
    behaviour = {f"{second.manifest.name}@2": BundleBehaviour(fails_probation=True)}
    with _fleet(mosquitto, trust, tmp_path, first, 6, bundles=behaviour) as fleet:
        _known(controller, 6, first.digest)
        _deploy_all(controller, fleet, second)
        _wait(
            lambda: _statuses(controller)["rolled_back"] + _statuses(controller)["failed"] == 6,
            60,
            "6 deployments ended badly",
        )
        _wait(lambda: fleet.settled_on(first.digest) == 6, 30, "all back on the first bundle")
        assert fleet.counters.failures == {"inference_errors": 6}
        _known(controller, 6, first.digest)


def test_crashes_in_probation_revert_after_the_attempts_and_stage_failures_are_reported(
    controller, mosquitto, trust, tmp_path, bundles
):
    first, second = bundles
    with _fleet(
        mosquitto,
        trust,
        tmp_path,
        first,
        6,
        crash_in_probation=1.0,
        max_probation_attempts=1,
        restart_s=0.3,
    ) as fleet:
        _known(controller, 6, first.digest)
        _deploy_all(controller, fleet, second)
        _wait(lambda: fleet.counters.failures.get("probation_crashes") == 6, 60, "6 reverts")
        _wait(lambda: fleet.settled_on(first.digest) == 6, 30, "all back on the first bundle")
        assert fleet.counters.crashes == 6
        _known(controller, 6, first.digest)


@pytest.mark.parametrize(
    ("knob", "reason"),
    [
        ("fail_download", "stalled"),
        ("fail_verify", "bad_signature"),
        ("fail_install", "install_error"),
    ],
)
def test_each_stage_failure_knob_fails_that_stage(
    controller, mosquitto, trust, tmp_path, bundles, knob, reason
):
    first, second = bundles
    with _fleet(mosquitto, trust, tmp_path, first, 3, **{knob: 1.0}) as fleet:
        _known(controller, 3, first.digest)
        _deploy_all(controller, fleet, second)
        _wait(lambda: _statuses(controller)["failed"] == 3, 60, "3 failed deployments")
        assert fleet.counters.failures == {reason: 3}
        assert fleet.settled_on(first.digest) == 3


def test_the_sim_command_runs_devices_and_reports_them(mosquitto, trust, tmp_path, capsys):
    from controller.cli.main import main

    trust_path = tmp_path / "sim-trust.json"
    save_trust_store(trust, trust_path)
    code = main(
        [
            "--output",
            "json",
            "sim",
            "--devices",
            "3",
            "--broker-port",
            str(mosquitto.port),
            "--trust",
            str(trust_path),
            "--duration",
            "0.5",
            "--report-s",
            "0.2",
            "--bundle",
            "face@2:fps=0.3,score=-0.2",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "edgefleet sim: 3 devices online"
    assert json.loads(lines[1])["online"] == 3


def test_bundle_behaviour_specs_are_parsed_and_bad_ones_refused():
    from controller.cli.sim import parse_behaviour

    assert parse_behaviour("face@2:fps=0.3,score=-0.2,fail=1") == (
        "face@2",
        {"fps_factor": 0.3, "score_shift": -0.2, "fails_probation": True},
    )
    with pytest.raises(ValueError):
        parse_behaviour("face@2:speed=3")
    with pytest.raises(ValueError):
        parse_behaviour("face@2")
    knobs = SimKnobs(bundles={"face@2": BundleBehaviour(fps_factor=0.3)})
    assert knobs.behaviour("face", 2, "ab" * 32).fps_factor == 0.3
    assert knobs.behaviour("face", 3, "ab" * 32).fps_factor == 1.0
