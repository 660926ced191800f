"""`edgefleet sim`: run N simulated agents against a broker, to rehearse a rollout.

The devices speak the real wire contract to whatever controller listens on the broker, take
bundles as MQTT chunks, reassemble and verify them for real (against `--trust`), and fail the
way the knobs say. It needs the controller's packages; they are imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from controller.cli.client import EXIT_OK, EXIT_REFUSED, missing_extra

EXIT_SIM_FAILED = EXIT_REFUSED

_RATES = (
    ("fail_download", "transfer given up half way (stalled)"),
    ("fail_verify", "bundle refused after download"),
    ("fail_install", "slot install fails"),
    ("fail_probation", "probation fails (inference errors)"),
    ("crash_in_probation", "agent dies during probation and restarts"),
    ("offline_mid_download", "device drops off half way through a download"),
    ("loss", "chunk loss on the link"),
    ("slow_fraction", "share of devices on slow links"),
)


def parse_behaviour(text: str) -> tuple[str, dict[str, Any]]:
    """`KEY:field=value,...` (KEY is name@version, name or digest prefix) as (key, fields).

    Raises ValueError for a malformed spec."""
    key, sep, rest = text.partition(":")
    if not key or not sep or not rest:
        raise ValueError(f"expected KEY:field=value,..., got {text!r}")
    names = {
        "fps": "fps_factor",
        "infer": "infer_ms_factor",
        "det": "det_rate_factor",
        "score": "score_shift",
        "fail": "fails_probation",
    }
    fields: dict[str, Any] = {}
    for part in rest.split(","):
        name, eq, value = part.partition("=")
        if not eq or name.strip() not in names:
            raise ValueError(f"unknown bundle behaviour {part!r}; known: {', '.join(names)}")
        field = names[name.strip()]
        fields[field] = (
            value.strip() in ("1", "true", "yes") if field == "fails_probation" else (float(value))
        )
    return key, fields


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from controller.demo.sim.fleet import SimFleet
        from controller.demo.sim.knobs import BundleBehaviour, SimKnobs
        from ota.trust_file import load_trust_store
    except ModuleNotFoundError as exc:
        missing_extra("sim", "controller", exc)

    try:
        behaviours = dict(parse_behaviour(text) for text in args.bundle)
        knobs = SimKnobs(
            seed=args.seed,
            slow_factor=args.slow_factor,
            link_mb_s=args.link_mb_s,
            offline_s=args.offline_s,
            probation_s=args.probation_s,
            health_interval_s=args.health_interval_s,
            chunk_request_timeout_s=args.chunk_request_timeout_s,
            bundles={k: BundleBehaviour(**v) for k, v in behaviours.items()},
            **{name: getattr(args, name) for name, _ in _RATES},
        )
        trust = load_trust_store(args.trust)
    except (ValueError, ValidationError, OSError) as exc:
        print(f"edgefleet sim: {exc}", file=sys.stderr)
        return EXIT_SIM_FAILED
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fleet = SimFleet(
        args.devices,
        host=args.broker_host,
        port=args.broker_port,
        prefix=args.prefix,
        trust=trust,
        knobs=knobs,
        id_prefix=args.id_prefix,
        workdir=args.workdir,
        installed=args.installed,
    )
    try:
        fleet.start(timeout=max(60.0, args.devices / 10))
        print(f"edgefleet sim: {args.devices} devices online", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(args.report_s):
            _report(fleet, args.output)
            if deadline is not None and time.monotonic() >= deadline:
                break
    except KeyboardInterrupt:
        pass
    except TimeoutError as exc:
        print(f"edgefleet sim: {exc}", file=sys.stderr)
        return EXIT_SIM_FAILED
    finally:
        fleet.stop()
        signal.signal(signal.SIGTERM, previous)
    _report(fleet, args.output)
    return EXIT_OK


def _report(fleet: Any, output: str) -> None:
    c = fleet.counters
    on = dict(fleet.running_on()) if fleet.loop.running else {}
    summary = {
        "online": fleet.online(),
        "running_on": {digest[:12]: n for digest, n in on.items()},
        "deploys": c.deploys,
        "verified": c.verified,
        "running": c.running,
        "failed": c.failed,
        "rolled_back": c.rolled_back,
        "chunk_requests": c.chunk_requests,
        "chunks": c.chunks,
        "dropped_chunks": c.dropped_chunks,
        "verifier_runs": c.verifier_runs,
        "loop_errors": fleet.loop.errors,
        "failures": c.failures,
    }
    if output == "json":
        print(json.dumps(summary), flush=True)
    else:
        print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)


def add_sim_parser(subparsers: Any) -> None:
    """`sim`."""
    parser = subparsers.add_parser(
        "sim", help="run simulated devices against a broker (rehearse a rollout)"
    )
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--prefix", default="edgefleet/v1", help="topic prefix")
    parser.add_argument("--id-prefix", default="sim", help="device ids are ID-PREFIX-0000...")
    parser.add_argument(
        "--trust", type=Path, required=True, help="trust store the devices verify bundles with"
    )
    parser.add_argument("--installed", type=Path, help="bundle file every device starts on")
    parser.add_argument("--seed", type=int, default=0)
    for name, text in _RATES:
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=0.0, help=text)
    parser.add_argument("--slow-factor", type=float, default=0.1, help="slow links' share")
    parser.add_argument("--link-mb-s", type=float, default=0.0, help="per-device MB/s (0: any)")
    parser.add_argument("--offline-s", type=float, default=5.0)
    parser.add_argument("--probation-s", type=float, default=10.0)
    parser.add_argument("--health-interval-s", type=float, default=10.0)
    parser.add_argument(
        "--chunk-request-timeout-s",
        type=float,
        default=2.0,
        help="seconds without a chunk before a device asks again (then with backoff)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the devices' downloads go (default: a temporary one)"
    )
    parser.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="KEY:SPEC",
        help="how a bundle runs, e.g. face@2:fps=0.3,score=-0.2 or face@3:fail=1",
    )
    parser.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    parser.add_argument("--report-s", type=float, default=10.0, help="seconds between reports")
    parser.set_defaults(func=cmd_sim)
