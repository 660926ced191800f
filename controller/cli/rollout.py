"""`edgefleet rollout create|list|show|pause|resume|approve|cancel|abort`: staged rollouts of a
bundle over a selection of devices; `show --watch` follows one with a progress bar per wave."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.cli.client import (
    EXIT_OK,
    Column,
    add_api_options,
    api_get,
    api_request,
    client,
    emit,
    local_time,
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
        raise SystemExit(
            f"edgefleet rollout: --start-at {text!r} is not ISO 8601 or unix time"
        ) from None


def _gate(text: str) -> dict[str, Any]:
    """`fps:min=0.8`, `inference_p95:max=1.5:window=120` → a gate."""
    name, *parts = text.split(":")
    gate: dict[str, Any] = {"name": name}
    keys = {"min": "min", "max": "max", "window": "window_s"}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in keys or not value:
            raise SystemExit(f"edgefleet rollout: bad gate {text!r} (NAME:min=X:max=Y:window=S)")
        gate[keys[key]] = float(value)
    return gate


def spec_from(args: argparse.Namespace) -> dict[str, Any]:
    """The rollout spec: a --spec JSON file, overridden by the flags given."""
    spec: dict[str, Any] = json.loads(Path(args.spec).read_text()) if args.spec else {}
    flags = {
        "waves": args.waves.split(",") if args.waves else None,
        "rate_per_min": args.rate,
        "growth_factor": args.growth,
        "growth_every": args.growth_every,
        "jitter": args.jitter,
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


def watch(args: argparse.Namespace) -> int:
    """Follow the rollout until it reaches a final state: a progress bar per wave, or with
    `--output json` one JSON line each time it changes."""
    with client(args) as api:
        if args.output == "json":
            last = None
            while True:
                rollout = api.get(f"/api/rollouts/{args.rollout_id}")
                if rollout != last:
                    sys.stdout.write(json.dumps(rollout) + "\n")
                    sys.stdout.flush()
                    last = rollout
                if rollout["state"] in FINAL_STATES or args.once:
                    return EXIT_OK
                time.sleep(args.interval)
        return _watch_bars(args, api)


def _watch_bars(args: argparse.Namespace, api: Any) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(file=sys.stdout)
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
            if rollout["state"] in FINAL_STATES or args.once:
                return EXIT_OK
            time.sleep(args.interval)


def _action(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        body = {"revert": args.revert} if name == "abort" else None
        rollout = api_request(args, "POST", f"/api/rollouts/{args.rollout_id}/{name}", json=body)
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
    show.add_argument("rollout_id", metavar="ROLLOUT")
    show.add_argument("--watch", action="store_true", help="follow it with live progress bars")
    show.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")
    show.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    add_api_options(show)
    show.set_defaults(func=cmd_show)

    for name, text in (
        ("pause", "offer no more devices until resumed"),
        ("resume", "continue a paused or halted rollout"),
        ("approve", "open the next wave"),
        ("cancel", "offer no more devices; keep what was done"),
        ("abort", "stop now (--revert: send every touched device back)"),
    ):
        action = sub.add_parser(name, help=text)
        action.add_argument("rollout_id", metavar="ROLLOUT")
        if name == "abort":
            action.add_argument("--revert", action="store_true")
        add_api_options(action)
        action.set_defaults(func=_action(name))
