"""`edgefleet rollout create|list|show|devices|pause|resume|approve|cancel|abort|revert`: staged
rollouts of a bundle over a selection of devices; `show --watch` follows one with a progress bar
per wave."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from controller.cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    ApiClient,
    ApiError,
    Column,
    NotAuthenticated,
    Refused,
    UsageError,
    add_api_options,
    api_get,
    api_request,
    client,
    emit,
    local_time,
    progress_console,
)
from controller.cli.groups import add_selector_options, selector_from

FINAL_STATES = frozenset({"completed", "cancelled", "reverted", "halted", "aborted"})
ROLLOUT_COLUMNS: list[Column] = [
    ("rollout", lambda r: r["id"]),
    ("name", lambda r: r["name"]),
    ("bundle", lambda r: r["bundle_ref"]),
    ("state", lambda r: r["state"]),
    ("wave", lambda r: f"{r['wave'] + 1}/{len(r['waves'])}"),
    ("done", lambda r: f"{_done(r)}/{sum(w['total'] for w in r['waves'])}"),
    ("reason", lambda r: r["reason"] or "-"),
    ("created", lambda r: local_time(r["created"])),
]
TIMELINE_COLUMNS: list[Column] = [
    ("time", lambda r: local_time(r["ts"])),
    ("state", lambda r: r["state"]),
    ("reason", lambda r: r["reason"]),
    ("data", lambda r: json.dumps(r["data"], sort_keys=True) if r["data"] else "-"),
]
_FINISHED = ("succeeded", "failed", "reverted", "revert_failed", "skipped")


def _done(rollout: dict[str, Any]) -> int:
    return sum(w["counts"].get(s, 0) for w in rollout["waves"] for s in _FINISHED)


def _start_at(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"rollout: --start-at {text!r} is not ISO 8601 or unix time") from None


def _gate(text: str) -> dict[str, Any]:
    """`fps:min=0.8`, `inference_p95:max=1.5:window=120` → a gate."""
    name, *parts = text.split(":")
    gate: dict[str, Any] = {"name": name}
    keys = {"min": "min", "max": "max", "window": "window_s"}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in keys or not value:
            raise UsageError(f"rollout: bad gate {text!r} (NAME:min=X:max=Y:window=S)")
        gate[keys[key]] = float(value)
    return gate


def spec_from(args: argparse.Namespace) -> dict[str, Any]:
    """The rollout spec: a --spec JSON file, overridden by the flags given."""
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"rollout: --spec {args.spec}: {exc}") from None
        if not isinstance(spec, dict):
            raise UsageError(f"rollout: --spec {args.spec} is not a JSON object")
    flags = {
        "waves": args.waves.split(",") if args.waves else None,
        "rate_per_min": args.rate,
        "growth_factor": args.growth,
        "growth_every": args.growth_every,
        "jitter": args.jitter,
        "max_in_flight": args.max_in_flight,
        "success_threshold": args.success_threshold,
        "failure_threshold": args.failure_threshold,
        "min_finished": args.min_finished,
        "gates": [_gate(g) for g in args.gate] or None,
        "on_failure": "revert" if args.revert_on_failure else None,
        "approval": True if args.approval else None,
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    timeouts = {
        f"{stage}_s": getattr(args, f"timeout_{stage}")
        for stage in ("offered", "downloading", "installing", "probation")
        if getattr(args, f"timeout_{stage}") is not None
    }
    if timeouts:
        spec["timeouts"] = {**spec.get("timeouts", {}), **timeouts}
    return spec


def cmd_create(args: argparse.Namespace) -> int:
    body = {
        "name": args.name,
        "bundle": args.bundle,
        "selector": selector_from(args),
        "spec": spec_from(args),
        "start_at": _start_at(args.start_at),
    }
    emit(args, api_request(args, "POST", "/api/rollouts", json=body), ROLLOUT_COLUMNS)
    return EXIT_OK


MEMBER_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("wave", lambda r: str(r["wave"] + 1)),
    ("state", lambda r: r["state"]),
    ("previous", lambda r: (r["previous"] or "-")[:12]),
    ("offered", lambda r: local_time(r["offered_at"])),
    ("finished", lambda r: local_time(r["finished_at"])),
    ("reason", lambda r: r["reason"] or "-"),
]


def resolve_rollout(api: ApiClient, ref: str) -> str:
    """The id of the rollout `ref` names: its id, a unique id prefix, or its name (the newest
    open one when several share it). Raises Refused, ApiError, ControllerUnreachable."""
    try:
        return str(api.get(f"/api/rollouts/{ref}")["id"])
    except ApiError as exc:
        if exc.status != 404 or isinstance(exc, NotAuthenticated):
            raise
    rows = api.get("/api/rollouts", limit=1000)
    found = [r for r in rows if r["name"] == ref] or [r for r in rows if r["id"].startswith(ref)]
    if len(found) > 1:
        still_open = [r for r in found if r["state"] not in FINAL_STATES]
        found = still_open if len(still_open) == 1 else found
    if not found:
        raise Refused(
            f"no rollout {ref!r} (an id, an id prefix or a name: `edgefleet rollout list`)"
        )
    if len(found) > 1:
        ids = ", ".join(r["id"] for r in found[:5])
        raise Refused(f"{ref!r} names {len(found)} rollouts ({ids}); give the id")
    return str(found[0]["id"])


def _resolved(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`func` with its ROLLOUT argument made an id first."""

    def run(args: argparse.Namespace) -> int:
        with client(args) as api:
            args.rollout_id = resolve_rollout(api, args.rollout_id)
        return func(args)

    return run


def cmd_devices(args: argparse.Namespace) -> int:
    emit(args, api_get(args, f"/api/rollouts/{args.rollout_id}/devices"), MEMBER_COLUMNS)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    emit(args, api_get(args, "/api/rollouts", limit=args.limit), ROLLOUT_COLUMNS)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    if args.watch:
        return watch(args)
    rollout = api_get(args, f"/api/rollouts/{args.rollout_id}")
    timeline = api_get(args, f"/api/rollouts/{args.rollout_id}/timeline")
    if args.output == "json":
        emit(args, {**rollout, "timeline": timeline}, ROLLOUT_COLUMNS)
        return EXIT_OK
    emit(args, rollout, ROLLOUT_COLUMNS)
    wave_columns: list[Column] = [
        ("wave", lambda w: str(w["index"] + 1)),
        ("devices", lambda w: str(w["total"])),
        *[(s, lambda w, s=s: str(w["counts"].get(s, 0))) for s in _STATE_ORDER],
    ]
    print()
    emit(args, rollout["waves"], wave_columns)
    print()
    emit(args, timeline, TIMELINE_COLUMNS)
    return EXIT_OK


_STATE_ORDER = ("queued", "offered", "deferred", "succeeded", "failed", "reverting", "reverted")


def _wave_line(rollout: dict[str, Any]) -> str:
    """One line of where the rollout stands, for logs and pipes."""
    waves = []
    for wave in rollout["waves"]:
        counts = wave["counts"]
        done = sum(counts.get(s, 0) for s in _FINISHED)
        detail = " ".join(f"{s}={counts[s]}" for s in _STATE_ORDER if counts.get(s))
        waves.append(f"wave {wave['index'] + 1}: {done}/{wave['total']} {detail}".rstrip())
    state = f"{rollout['state']} {rollout['reason']}".rstrip()
    return f"{local_time(time.time())} {rollout['name']} {state} | " + " | ".join(waves)


def _ended(rollout: dict[str, Any]) -> int:
    """The exit code of a watch that saw `rollout` settle: 0 only when it completed."""
    if rollout["state"] == "completed":
        return EXIT_OK
    reason = f" ({rollout['reason']})" if rollout["reason"] else ""
    print(f"edgefleet: rollout {rollout['id']} ended {rollout['state']}{reason}", file=sys.stderr)
    return EXIT_REFUSED


def watch(args: argparse.Namespace) -> int:
    """Follow the rollout until it settles (no longer open, not reverting). With `--output
    json`: one JSON line each time it changes; else a line each time it changes, and on a
    terminal a live progress bar per wave (on stderr). Exit 0 when it completed, 1 when it
    ended otherwise (halted, cancelled, aborted, reverted)."""
    console = progress_console() if args.output != "json" else None
    with client(args) as api:
        if console is not None:
            return _watch_bars(args, api, console)
        last = None
        while True:
            rollout = api.get(f"/api/rollouts/{args.rollout_id}")
            if rollout != last:
                if args.output == "json":
                    sys.stdout.write(json.dumps(rollout) + "\n")
                else:
                    sys.stdout.write(_wave_line(rollout) + "\n")
                sys.stdout.flush()
                last = rollout
            if args.once:
                return EXIT_OK
            if rollout["state"] in FINAL_STATES:
                return _ended(rollout)
            time.sleep(args.interval)


def _watch_bars(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
    )
    tasks: dict[int, Any] = {}
    header = progress.add_task("", total=None, detail="")
    with Live(progress, console=console, refresh_per_second=4):
        while True:
            rollout = api.get(f"/api/rollouts/{args.rollout_id}")
            progress.update(
                header,
                description=f"{rollout['name']} {rollout['bundle_ref']}",
                detail=f"{rollout['state']} {rollout['reason']}".rstrip(),
            )
            for wave in rollout["waves"]:
                counts = wave["counts"]
                done = sum(counts.get(s, 0) for s in _FINISHED)
                detail = " ".join(f"{s}={counts[s]}" for s in _STATE_ORDER if counts.get(s))
                if wave["index"] not in tasks:
                    tasks[wave["index"]] = progress.add_task(
                        f"wave {wave['index'] + 1}", total=wave["total"], detail=""
                    )
                progress.update(
                    tasks[wave["index"]], completed=done, total=wave["total"], detail=detail
                )
            if args.once or rollout["state"] in FINAL_STATES:
                break
            time.sleep(args.interval)
    sys.stdout.write(_wave_line(rollout) + "\n")
    return EXIT_OK if args.once else _ended(rollout)


def _action(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        path, body = name, None
        if name == "abort":
            body = {"revert": args.revert}
        elif name == "revert":  # the dashboard's revert: abort, sending touched devices back
            path, body = "abort", {"revert": True}
        rollout = api_request(args, "POST", f"/api/rollouts/{args.rollout_id}/{path}", json=body)
        emit(args, rollout, ROLLOUT_COLUMNS)
        return EXIT_OK

    return run


def add_rollout_parser(subparsers: Any) -> None:
    """`rollout` and its actions."""
    rollout = subparsers.add_parser("rollout", help="staged rollouts of a bundle")
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    create = sub.add_parser("create", help="roll a bundle out over the selected devices")
    create.add_argument("name")
    create.add_argument("--bundle", required=True, help="name@version or a digest prefix")
    add_selector_options(create)
    create.add_argument("--spec", default=None, help="a JSON file with the rollout's spec")
    create.add_argument("--waves", default=None, help="canary then shares, e.g. 1,10%%,50%%,100%%")
    create.add_argument("--rate", type=float, default=None, help="devices offered per minute")
    create.add_argument("--growth", type=float, default=None, help="rate multiplier ...")
    create.add_argument("--growth-every", type=int, default=None, help="... per N successes")
    create.add_argument("--jitter", type=float, default=None, help="0..1 spread of offer spacing")
    create.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="most devices offered and not yet finished at once (bounds broker memory)",
    )
    create.add_argument("--success-threshold", default=None, help="count or %% a wave needs")
    create.add_argument("--failure-threshold", default=None, help="count or %% that halts")
    create.add_argument("--min-finished", type=int, default=None)
    for stage in ("offered", "downloading", "installing", "probation"):
        create.add_argument(f"--timeout-{stage}", type=float, default=None, metavar="S")
    create.add_argument(
        "--gate", action="append", default=[], help="NAME:min=X|max=Y[:window=S] (repeatable)"
    )
    create.add_argument("--revert-on-failure", action="store_true", help="a halt reverts")
    create.add_argument("--approval", action="store_true", help="wait for approval between waves")
    create.add_argument("--start-at", default=None, help="ISO 8601 time or unix seconds")
    add_api_options(create)
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", help="list rollouts")
    listing.add_argument("--limit", type=int, default=50)
    add_api_options(listing)
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="a rollout's waves and timeline")
    show.add_argument("rollout_id", metavar="ROLLOUT", help="an id, an id prefix or a name")
    show.add_argument(
        "--watch",
        action="store_true",
        help="follow it until it settles (progress bars on a terminal); exit 0 if it completed",
    )
    show.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
    show.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    add_api_options(show)
    show.set_defaults(func=_resolved(cmd_show))

    devices = sub.add_parser("devices", help="a rollout's devices and where each stands")
    devices.add_argument("rollout_id", metavar="ROLLOUT")
    add_api_options(devices)
    devices.set_defaults(func=_resolved(cmd_devices))

    for name, text in (
        ("pause", "offer no more devices until resumed"),
        ("resume", "continue a paused or halted rollout"),
        ("approve", "open the next wave"),
        ("cancel", "offer no more devices; keep what was done"),
        ("abort", "stop now (--revert: send every touched device back)"),
        ("revert", "stop now and send every touched device back (abort --revert)"),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("rollout_id", metavar="ROLLOUT")
        if name == "abort":
            action.add_argument("--revert", action="store_true")
        add_api_options(action)
        action.set_defaults(func=_resolved(_action(name)))
