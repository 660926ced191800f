"""`edgefleet devices`, `detections` and `events`: what the fleet's devices report."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import EXIT_OK, Column, add_api_options, ago, api_get, emit, local_time

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
    """`devices`, `detections` and `events`."""
    devices = subparsers.add_parser("devices", help="list devices")
    add_api_options(devices)
    devices.set_defaults(func=cmd_devices)

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
