"""`edgefleet deploy` and `deployments`: send a stored bundle to a device, and follow it."""

from __future__ import annotations

import argparse
from typing import Any

from controller.cli.client import (
    EXIT_OK,
    Column,
    add_api_options,
    api_get,
    api_request,
    emit,
    local_time,
)

DEPLOYMENT_COLUMNS: list[Column] = [
    ("deployment", lambda r: r["id"][:12]),
    ("device", lambda r: r["device"]),
    ("bundle", lambda r: r["bundle"][:12]),
    ("status", lambda r: r["status"]),
    ("reason", lambda r: r["reason"] or "-"),
    ("updated", lambda r: local_time(r["updated"])),
]


def cmd_deploy(args: argparse.Namespace) -> int:
    body = {"device": args.device, "bundle": args.digest, "transport": args.transport}
    emit(args, api_request(args, "POST", "/api/deployments", json=body), DEPLOYMENT_COLUMNS)
    return EXIT_OK


def cmd_deployments(args: argparse.Namespace) -> int:
    rows = api_get(args, "/api/deployments", limit=args.limit, device=args.device)
    emit(args, rows, DEPLOYMENT_COLUMNS)
    return EXIT_OK


def add_deploy_parsers(subparsers: Any) -> None:
    """`deploy` and `deployments`."""
    deploy = subparsers.add_parser("deploy", help="deploy a stored bundle to a device")
    add_api_options(deploy)
    deploy.add_argument("device")
    deploy.add_argument("digest")
    deploy.add_argument(
        "--transport",
        choices=("auto", "mqtt", "http"),
        default="auto",
        help="MQTT chunks or HTTP range download (auto: HTTP for large bundles)",
    )
    deploy.set_defaults(func=cmd_deploy)

    deployments = subparsers.add_parser("deployments", help="list deployments")
    add_api_options(deployments)
    deployments.add_argument("--limit", type=int, default=50)
    deployments.add_argument("--device", default=None)
    deployments.set_defaults(func=cmd_deployments)
