"""`edgefleet devices`, `snapshot`, `detections` and `events`: what the fleet's devices report,
enrollment decisions, and a snapshot asked of one device."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli.client import (
    EXIT_OK,
    ApiClient,
    ApiError,
    Column,
    Refused,
    add_api_options,
    ago,
    api_get,
    api_request,
    client,
    emit,
    local_time,
)

DEVICE_COLUMNS: list[Column] = [
    ("device", lambda r: r["id"]),
    ("online", lambda r: "yes" if r["online"] else "no"),
    ("profile", lambda r: r["profile"] or "-"),
    ("agent", lambda r: r["agent_version"] or "-"),
    ("bundle", lambda r: f"{r['active_name']}@{r['active_version']}" if r["active_name"] else "-"),
    ("runtime", lambda r: r["active_runtime"] or "-"),
    ("last seen", lambda r: ago(r["last_seen"])),
]
DETECTION_COLUMNS: list[Column] = [
    ("time", lambda r: local_time(r["ts"])),
    ("device", lambda r: r["device"]),
    ("camera", lambda r: r["camera"]),
    ("label", lambda r: r["label"]),
    ("track", lambda r: "-" if r.get("track_id") is None else str(r["track_id"])),
    ("score", lambda r: f"{r['score']:.2f}"),
    ("box", lambda r: f"{r['x1']:.2f},{r['y1']:.2f} {r['x2']:.2f},{r['y2']:.2f}"),
]
EVENT_COLUMNS: list[Column] = [
    ("time", lambda r: local_time(r["ts"])),
    ("device", lambda r: r["device"]),
    ("kind", lambda r: r["kind"]),
    ("level", lambda r: r["level"]),
    ("bundle", lambda r: (r["bundle"] or "-")[:12]),
    ("reason", lambda r: r["reason"] or "-"),
    ("message", lambda r: r["message"]),
]


IDENTITY_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("status", lambda r: r["status"]),
    ("key", lambda r: (r["fingerprint"] or "-")[:16]),
    ("asked", lambda r: ago(r["created"])),
    ("changed", lambda r: ago(r["updated"])),
]
TOKEN_COLUMNS: list[Column] = [
    ("token", lambda r: r["token"]),
    ("device", lambda r: r["device"] or "any"),
    ("expires", lambda r: local_time(r["expires"])),
]


def cmd_pending(args: argparse.Namespace) -> int:
    status = None if args.all else "pending"
    emit(args, api_get(args, "/api/enrollment/identities", status=status), IDENTITY_COLUMNS)
    return EXIT_OK


def _decide(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        answer = api_request(args, "POST", f"/api/enrollment/{args.device}/{action}")
        emit(args, {"device": args.device, "action": action, **(answer or {})}, _DONE_COLUMNS)
        return EXIT_OK

    return run


_DONE_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("done", lambda r: r["action"]),
]


def cmd_preapprove(args: argparse.Namespace) -> int:
    body = {"device": args.device, "fingerprint": args.fingerprint}
    api_request(args, "POST", "/api/enrollment/preapproved", json=body)
    emit(args, {"device": args.device, "action": "preapprove"}, _DONE_COLUMNS)
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    body = {"device": args.device, "ttl_s": args.ttl}
    emit(args, api_request(args, "POST", "/api/enrollment/tokens", json=body), TOKEN_COLUMNS)
    return EXIT_OK


SNAPSHOT_COLUMNS: list[Column] = [
    ("snapshot", lambda r: r["snapshot_id"]),
    ("command", lambda r: r["cmd_id"]),
    ("url", lambda r: r["url"]),
    ("saved", lambda r: r.get("saved") or "-"),
]


def cmd_device_show(args: argparse.Namespace) -> int:
    with client(args) as api:
        device = api.get(f"/api/devices/{args.device}")
    if args.output == "json":
        emit(args, device, DEVICE_COLUMNS)
        return EXIT_OK
    for key, value in device.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        print(f"{key:<16} {shown}")
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Ask the device for a track's best frame; with --out, wait for it and save the JPEG."""
    with client(args) as api:
        body = {"camera": args.camera, "track_id": args.track}
        asked = api.request("POST", f"/api/devices/{args.device}/snapshot", json=body)
        if args.out is not None:
            jpeg = _wait_for_snapshot(api, asked["snapshot_id"], args.timeout)
            args.out.write_bytes(jpeg)
            asked["saved"] = str(args.out)
    emit(args, asked, SNAPSHOT_COLUMNS)
    return EXIT_OK


def _wait_for_snapshot(api: ApiClient, snapshot_id: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return api.content(f"/api/snapshots/{snapshot_id}")
        except ApiError as exc:
            if exc.status != 404 or "not uploaded yet" not in str(exc):
                raise
        if time.monotonic() >= deadline:
            raise Refused(f"snapshot {snapshot_id} not uploaded after {timeout:g} s")
        time.sleep(0.5)


def cmd_devices(args: argparse.Namespace) -> int:
    emit(args, api_get(args, "/api/devices"), DEVICE_COLUMNS)
    return EXIT_OK


def cmd_detections(args: argparse.Namespace) -> int:
    rows = api_get(args, "/api/detections", limit=args.limit, device=args.device, label=args.label)
    emit(args, rows, DETECTION_COLUMNS)
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    rows = api_get(args, "/api/events", limit=args.limit, device=args.device, kind=args.kind)
    emit(args, rows, EVENT_COLUMNS)
    return EXIT_OK


def add_devices_parsers(subparsers: Any) -> None:
    """`devices` (and `devices show|pending|approve|...`), `enroll`, `snapshot`, `detections`
    and `events`."""
    devices = subparsers.add_parser("devices", help="list devices; enrollment decisions")
    add_api_options(devices)
    devices.set_defaults(func=cmd_devices)
    decisions = devices.add_subparsers(dest="devices_command", metavar="{pending,approve,...}")
    show = decisions.add_parser("show", help="one device: its state, runtimes, active bundle")
    add_api_options(show)
    show.add_argument("device")
    show.set_defaults(func=cmd_device_show)
    pending = decisions.add_parser("pending", help="devices waiting for approval")
    add_api_options(pending)
    pending.add_argument("--all", action="store_true", help="every identity, any status")
    pending.set_defaults(func=cmd_pending)
    for action, text in (
        ("approve", "let a pending (or revoked) device get its certificate"),
        ("reject", "refuse a pending device"),
        ("revoke", "revoke the device's certificates and cut it off the broker"),
    ):
        sub = decisions.add_parser(action, help=text)
        add_api_options(sub)
        sub.add_argument("device")
        sub.set_defaults(func=_decide(action))
    pre = decisions.add_parser("preapprove", help="let a device enroll without a token")
    add_api_options(pre)
    pre.add_argument("device")
    pre.add_argument("--fingerprint", default=None, help="sha256 of its public key (hex)")
    pre.set_defaults(func=cmd_preapprove)

    enroll = subparsers.add_parser("enroll", help="device enrollment tokens")
    tokens = enroll.add_subparsers(dest="enroll_command", required=True).add_parser(
        "token", help="one-time enrollment tokens"
    )
    create = tokens.add_subparsers(dest="token_command", required=True).add_parser(
        "create", help="a one-time token a device enrolls with (shown once)"
    )
    add_api_options(create)
    create.add_argument("--device", default=None, help="bind the token to this device id")
    create.add_argument("--ttl", type=int, default=86400, help="seconds it stays valid")
    create.set_defaults(func=cmd_token_create)

    snapshot = subparsers.add_parser(
        "snapshot", help="ask a device for a track's best frame (--out: wait and save it)"
    )
    add_api_options(snapshot)
    snapshot.add_argument("device", metavar="DEVICE")
    snapshot.add_argument("--camera", required=True)
    snapshot.add_argument("--track", type=int, required=True, help="a detection's track id")
    snapshot.add_argument("--out", type=Path, default=None, help="wait for the JPEG, save here")
    snapshot.add_argument("--timeout", type=float, default=30.0, metavar="S", help="with --out")
    snapshot.set_defaults(func=cmd_snapshot)

    detections = subparsers.add_parser("detections", help="latest detections")
    add_api_options(detections)
    detections.add_argument("--limit", type=int, default=20)
    detections.add_argument("--device", default=None)
    detections.add_argument("--label", default=None)
    detections.set_defaults(func=cmd_detections)

    events = subparsers.add_parser("events", help="latest device events")
    add_api_options(events)
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--device", default=None)
    events.add_argument("--kind", default=None)
    events.set_defaults(func=cmd_events)
