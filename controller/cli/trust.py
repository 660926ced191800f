"""`edgefleet trust push`: send root documents to every device through the controller."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controller.auth.signing import ROOT_EXPIRY_WARNING_DAYS, root_expiry_warning
from controller.cli.client import (
    EXIT_OK,
    EXIT_USAGE,
    Column,
    add_api_options,
    api_request,
    emit,
)

PUSH_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("command", lambda r: r["cmd_id"]),
    ("root version", lambda r: str(r["root_version"])),
]


def request_body(paths: list[Path]) -> bytes:
    """One document as it is, several as {"roots": [...]}, oldest first. Raises OSError."""
    texts = [path.read_text(encoding="utf-8") for path in paths]
    if len(texts) == 1:
        return texts[0].encode("utf-8")
    return json.dumps({"roots": texts}).encode("utf-8")


def cmd_trust_push(args: argparse.Namespace) -> int:
    try:
        body = request_body(args.roots)
    except OSError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # the newest root is the one devices will hold: say so if it is about to run out
    warning = root_expiry_warning(args.roots[-1], days=args.warn_days)
    if warning is not None:
        print(f"edgefleet: warning: {warning}", file=sys.stderr)
    headers = {"content-type": "application/json"}
    answer = api_request(args, "POST", "/api/trust", content=body, headers=headers)
    rows = [
        {"device": device, "cmd_id": cmd_id, "root_version": answer["root_version"]}
        for device, cmd_id in answer["commands"].items()
    ]
    emit(args, rows, PUSH_COLUMNS)
    if args.output != "json":
        print(
            f"root version {answer['root_version']} sent to {len(rows)} devices; "
            "their answers: `edgefleet events --kind ack`"
        )
    return EXIT_OK


def add_trust_parser(subparsers: Any) -> None:
    """`trust push`."""
    parser = subparsers.add_parser("trust", help="the root of trust on the fleet's devices")
    sub = parser.add_subparsers(dest="trust_command", required=True)
    push = sub.add_parser("push", help="send root documents (oldest first) to every device")
    add_api_options(push)
    push.add_argument("roots", type=Path, nargs="+", help="root.json, or root.N.json files")
    push.add_argument(
        "--warn-days",
        type=int,
        default=ROOT_EXPIRY_WARNING_DAYS,
        help="warn when the newest root pushed expires within this many days",
    )
    push.set_defaults(func=cmd_trust_push)
