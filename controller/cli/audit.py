"""`edgefleet audit list`: the audit log of mutating requests (admin)."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import EXIT_OK, Column, add_api_options, api_get, emit, local_time

AUDIT_COLUMNS: list[Column] = [
    ("id", lambda r: str(r["id"])),
    ("time", lambda r: local_time(r["ts"])),
    ("actor", lambda r: r["actor"]),
    ("method", lambda r: r["method"]),
    ("action", lambda r: r["action"]),
    ("target", lambda r: r["target"] or "-"),
    ("status", lambda r: str(r["status"])),
    ("from", lambda r: r["client"] or "-"),
]


def cmd_audit_list(args: argparse.Namespace) -> int:
    rows = api_get(
        args,
        "/api/audit",
        actor=args.actor,
        action=args.action,
        method=args.method,
        status=args.status,
        since=args.since,
        before_id=args.before_id,
        limit=args.limit,
    )
    emit(args, rows, AUDIT_COLUMNS)
    return EXIT_OK


def add_audit_parser(subparsers: Any) -> None:
    """`audit list`."""
    audit = subparsers.add_parser("audit", help="the audit log (admin)")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    listing = sub.add_parser("list", help="mutating requests, newest first")
    add_api_options(listing)
    listing.add_argument("--actor", default=None)
    listing.add_argument("--action", default=None, help="route, e.g. /api/deployments")
    listing.add_argument("--method", default=None)
    listing.add_argument("--status", type=int, default=None)
    listing.add_argument("--since", type=float, default=None, help="unix time")
    listing.add_argument("--before-id", type=int, default=None, help="the next page")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_audit_list)
