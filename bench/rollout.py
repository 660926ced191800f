"""Rollout at fleet size: simulated devices take a bundle in waves from the real controller.

A real mosquitto (the demo broker's bounded configuration) and a real controller (ingest,
deployments, chunk server, rollout engine ticked by its scheduler, SQLite) serve `--devices`
simulated agents (`edgefleet sim`, in `--sim-processes` processes of their own) that start on a
small bundle. A rollout then takes a
`--megabytes` bundle to the whole fleet in waves of 1 % → 10 % → 50 % → 100 %, each wave
judged by the engine on its success threshold before the next opens; `--slow-fraction` of the
devices read at `--slow-factor` of the others' speed. `devices_per_min` counts devices that
downloaded, verified, installed and passed probation, over the rollout's whole time.

Then the rollout is aborted with revert: `revert_s` is the time until the controller sees
every device back on the first bundle. Last, a bad bundle (it fails every probation) is rolled
out with a canary of ten and a failure threshold of one device: `halt_s` is the time from the
crossing failure being stored to the engine recording the halt.

Ends with `RESULT devices=… updated=… devices_per_min=… controller_bytes_ratio=…
broker_peak_rss_mb=… halt_s=… revert_s=…`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from controller.db import Deployment, Device
from controller.demo.broker import MosquittoBroker
from controller.rollouts import views
from controller.rollouts.spec import Amount, RolloutSpec, Selector, StageTimeouts
from controller.rollouts.states import OPEN_STATES, MemberState, RolloutState
from controller.rollouts.views import RolloutView
from controller.server import Controller
from controller.settings import ControllerSettings, HttpSettings, MqttSettings
from ota.build import BuiltBundle, BundleSpec, VariantSource, build_bundle
from ota.keys import SigningKey
from ota.manifest import InputSpec, PostprocessSpec
from ota.trust import TrustStore
from ota.trust_file import save_trust_store

WAVES = ("1%", "10%", "50%", "100%")
OPEN = {s.value for s in OPEN_STATES}


def build(workdir: Path, version: int, megabytes: float, key: SigningKey) -> BuiltBundle:
    """A real signed bundle whose one variant carries `megabytes` MB of random bytes."""
    src = workdir / f"src-{version}"
    src.mkdir()
    (src / "model.tflite").write_bytes(os.urandom(int(megabytes * 1_000_000)))
    spec = BundleSpec(
        name="rollout",
        version=version,
        labels=("face",),
        input=InputSpec(width=128, height=128),
        postprocess=PostprocessSpec(kind="blazeface"),
        variants=(VariantSource(runtime="litert", model="model.tflite"),),
    )
    out = workdir / f"rollout-{version}.bundle"
    return build_bundle(spec, src, [key], out, datetime.now(timezone.utc))


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(interval)


def devices_on(controller: Controller, digest: str) -> int:
    with controller.sessions() as session:
        rows = session.scalars(select(Device.active_digest)).all()
    return sum(1 for d in rows if d == digest)


def rollout_view(controller: Controller, rollout_id: str) -> RolloutView:
    with controller.sessions() as session:
        return views.get_rollout(session, rollout_id)


def run_rollout(
    controller: Controller, digest: str, spec: RolloutSpec, timeout: float
) -> tuple[str, int, float]:
    """Roll `digest` out to every device; returns (rollout id, devices updated, seconds)."""
    start = time.monotonic()
    rollout_id = controller.rollouts.create("bench", digest, Selector(), spec)
    seen_wave = -1
    deadline = start + timeout
    while True:
        view = rollout_view(controller, rollout_id)
        if view.wave != seen_wave:
            seen_wave = view.wave
            note(f"wave {view.wave + 1} of {len(view.waves)} open ({view.state})")
        if view.state not in OPEN:
            break
        if time.monotonic() > deadline:
            note(f"rollout still {view.state} after {timeout:.0f} s")
            break
        time.sleep(0.5)
    seconds = time.monotonic() - start
    for wave in view.waves:
        note(f"wave {wave.index + 1}: {wave.total} devices {wave.counts}")
    note(f"rollout {view.state} ({view.reason or '-'}) in {seconds:.1f}s")
    with controller.sessions() as session:
        failed = Counter(
            m.reason for m in views.members(session, rollout_id) if m.state == "failed"
        )
    if failed:
        note(f"failures by reason: {dict(failed)}")
    updated = sum(w.counts.get(str(MemberState.SUCCEEDED), 0) for w in view.waves)
    return rollout_id, updated, seconds


def measure_revert(
    controller: Controller, rollout_id: str, devices: int, digest: str, timeout: float
) -> float:
    """Abort the rollout with revert; seconds until the controller sees all on `digest`."""
    start = time.monotonic()
    controller.rollouts.abort(rollout_id, revert=True)
    wait(lambda: devices_on(controller, digest) >= devices, timeout, "revert", interval=0.5)
    return time.monotonic() - start


def measure_halt(controller: Controller, digest: str, spec: RolloutSpec) -> float:
    """A canary of ten with a bad bundle and a failure threshold of one: seconds from the
    crossing failure stored to the engine recording the halt."""
    halting = spec.model_copy(
        update={
            "waves": [Amount(value=10), Amount(value=100, percent=True)],
            "failure_threshold": Amount(value=1),
            "min_finished": 1,
        }
    )
    rollout_id = controller.rollouts.create("bench-bad", digest, Selector(), halting)
    wait(
        lambda: rollout_view(controller, rollout_id).state == RolloutState.HALTED.value,
        180,
        "halt",
    )
    with controller.sessions() as session:
        halted = min(
            e.ts
            for e in views.timeline(session, rollout_id)
            if e.state == RolloutState.HALTED.value
        )
        cmd_ids = [m.cmd_id for m in views.members(session, rollout_id) if m.cmd_id]
        failed = session.scalars(
            select(Deployment.updated).where(
                Deployment.cmd_id.in_(cmd_ids),
                Deployment.status.in_(("failed", "rolled_back")),
            )
        ).all()
    crossed = min(failed)
    return max(0.0, halted - crossed)


def workdir_root(megabytes: float, devices: int) -> str | None:
    """tmpfs when it holds half the fleet's downloads at once (fsync there costs nothing)."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        free = shutil.disk_usage(shm).free
        if free > megabytes * 1e6 * devices * 0.6:
            return str(shm)
    return None


def start_sims(
    args: argparse.Namespace, port: int, trust: Path, installed: Path, workdir: Path
) -> list[subprocess.Popen[str]]:
    """`edgefleet sim` in `--sim-processes` processes sharing out the devices: the simulated
    fleet gets interpreters of its own, apart from the controller's."""
    count = max(1, args.sim_processes)
    sims = []
    for n in range(count):
        devices = args.devices // count + (n < args.devices % count)
        argv = [
            str(Path(sys.executable).parent / "edgefleet"),
            "--output=json",
            "sim",
            f"--devices={devices}",
            f"--broker-port={port}",
            f"--id-prefix=sim{n}",
            f"--seed={n}",
            f"--trust={trust}",
            f"--installed={installed}",
            f"--workdir={workdir / f'sim{n}'}",
            f"--slow-fraction={args.slow_fraction}",
            f"--slow-factor={args.slow_factor}",
            f"--link-mb-s={args.link_mb_s}",
            f"--probation-s={args.probation}",
            "--health-interval-s=15",
            "--chunk-request-timeout-s=5",
            "--bundle=rollout@3:fail=1",  # the bad bundle fails every probation
            "--report-s=3600",
        ]
        sims.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    return sims


def stop_sims(sims: Sequence[subprocess.Popen[str]]) -> dict[str, int]:
    """Stop the simulators; their counters summed, from each one's last report."""
    totals: Counter[str] = Counter()
    for sim in sims:
        if sim.poll() is None:
            sim.send_signal(signal.SIGTERM)
        try:
            out, _ = sim.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sim.kill()
            out, _ = sim.communicate()
        reports = [line for line in out.splitlines() if line.startswith("{")]
        if reports:
            for key, value in json.loads(reports[-1]).items():
                if isinstance(value, int):
                    totals[key] += value
                elif key == "failures":
                    totals.update({f"failure:{k}": v for k, v in value.items()})
    return dict(totals)


def note(text: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--slow-fraction", type=float, default=0.10)
    parser.add_argument("--slow-factor", type=float, default=0.10)
    parser.add_argument(
        "--link-mb-s", type=float, default=10.0, help="per-device read speed of the others"
    )
    parser.add_argument("--probation", type=float, default=2.0)
    parser.add_argument("--success", default="90%", help="successes a wave needs to pass")
    parser.add_argument("--timeout", type=float, default=1800.0, help="the rollout's, seconds")
    parser.add_argument("--coalesce", type=float, default=2.0, help="chunk coalescing, seconds")
    parser.add_argument(
        "--send-mb-s",
        type=float,
        default=0.0,
        help="ceiling on the pace of a chunk pass, MB/s (0: none, the reader window paces it)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="the rollout's cap on devices offered and not finished (0: none): bounds what the "
        "broker queues for readers, at most its per-client queue each",
    )
    parser.add_argument(
        "--sim-processes",
        type=int,
        default=1,
        help="processes the simulated devices are shared out among, apart from the controller",
    )
    parser.add_argument("--skip-halt", action="store_true")
    parser.add_argument(
        "--broker-config", default="", help="extra mosquitto.conf lines (';' between lines)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    workdir = Path(
        tempfile.mkdtemp(
            prefix="edgefleet-rollout-", dir=workdir_root(args.megabytes, args.devices)
        )
    )
    key = SigningKey.generate()
    trust = TrustStore.from_keys([key.public_key()])
    save_trust_store(trust, workdir / "trust.json")
    first = build(workdir, 1, 0.2, key)
    second = build(workdir, 2, args.megabytes, key)
    bad = build(workdir, 3, 0.2, key)
    extra = "\n".join(line.strip() for line in args.broker_config.split(";"))
    broker = MosquittoBroker(workdir=workdir / "broker", extra_config=extra).start()
    controller: Controller | None = None
    sims: list[subprocess.Popen[str]] = []
    counters: dict[str, int] = {}
    try:
        assert broker._proc is not None
        controller = Controller(
            ControllerSettings(
                data_dir=workdir / "controller",
                mqtt=MqttSettings(port=broker.port, client_id="bench-rollout"),
                http=HttpSettings(port=0),
                trust_path=workdir / "trust.json",
                chunk_size=args.chunk_kib * 1024,
                chunk_coalesce_s=args.coalesce,
                max_bundle_bytes=int(args.megabytes * 1e6) + (8 << 20),
                # the fleet shares one MQTT pass per wave: no bundle goes by HTTP
                http_transfer_bytes=int(args.megabytes * 1e6) + (8 << 20),
            )
        ).start()
        pace = args.send_mb_s
        controller.chunks.send_rate = pace * 1e6
        note("controller up; starting the simulated fleet")
        sims = start_sims(args, broker.port, workdir / "trust.json", first.path, workdir)

        def known() -> bool:
            if any(sim.poll() is not None for sim in sims):
                raise RuntimeError("a simulator exited before its devices came online")
            return devices_on(controller, first.digest) >= args.devices

        wait(known, 300, "devices known")
        note(f"{args.devices} simulated devices online in {len(sims)} processes")
        info = controller.bundles.add_file(second.path)
        note("the controller knows every device; the rollout starts")
        spec = RolloutSpec(
            waves=[Amount.parse(w) for w in WAVES],
            rate_per_min=1_000_000,
            max_in_flight=args.max_in_flight,
            success_threshold=Amount.parse(args.success),
            failure_threshold=Amount.parse("10%"),
            min_finished=10,
            timeouts=StageTimeouts(offered_s=120, downloading_s=900, installing_s=300),
        )
        sent_before = controller.chunks.bytes_sent
        rollout_id, updated, seconds = run_rollout(controller, info.digest, spec, args.timeout)
        sent = controller.chunks.bytes_sent - sent_before
        note("aborting with revert")
        revert_s = measure_revert(controller, rollout_id, args.devices, first.digest, 600)
        note(f"reverted in {revert_s:.1f}s")
        halt_s = float("nan")
        if not args.skip_halt:
            bad_info = controller.bundles.add_file(bad.path)
            halt_s = measure_halt(controller, bad_info.digest, spec)
            note(f"halted {halt_s:.2f}s after the crossing failure was stored")
        rss = peak_rss_mb(broker._proc.pid)
        counters = stop_sims(sims)
        print(
            f"# sim: {' '.join(f'{k}={v}' for k, v in sorted(counters.items()))} "
            f"passes={controller.chunks.passes} readers_released="
            f"{controller.chunks.readers_released}",
            file=sys.stderr,
        )
    finally:
        stop_sims(sims)
        if controller is not None:
            controller.stop()
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = sent / (info.size * len(WAVES))
    print(
        f"RESULT devices={args.devices} updated={updated} "
        f"devices_per_min={updated / seconds * 60:.0f} controller_bytes_ratio={ratio:.3f} "
        f"broker_peak_rss_mb={rss:.0f} halt_s={halt_s:.2f} revert_s={revert_s:.1f} "
        f"bundle_bytes={info.size} waves={len(WAVES)} rollout_s={seconds:.1f} "
        f"max_in_flight={args.max_in_flight} send_mb_s={pace:g} link_mb_s={args.link_mb_s:g}"
    )
    return 0 if updated >= Amount.parse(args.success).of(args.devices) else 1


if __name__ == "__main__":
    sys.exit(main())
