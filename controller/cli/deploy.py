"""`edgefleet deploy` and `deployments`: send a stored bundle to a device, and follow it."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.console import Console

from controller.cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    ApiClient,
    Column,
    Refused,
    add_api_options,
    api_get,
    client,
    emit,
    local_time,
    progress_console,
    resolve_bundle,
)

DEPLOYMENT_COLUMNS: list[Column] = [
    ("deployment", lambda r: r["id"][:12]),
    ("device", lambda r: r["device"]),
    ("bundle", lambda r: r["bundle"][:12]),
    ("status", lambda r: r["status"]),
    ("reason", lambda r: r["reason"] or "-"),
    ("updated", lambda r: local_time(r["updated"])),
]
# the stages a deployment moves through, in order (protocol.events.DeploymentStatus)
STAGES = (
    "pending",
    "sent",
    "accepted",
    "downloading",
    "verified",
    "installing",
    "probation",
    "running",
)
SUCCEEDED = "running"
FAILED = frozenset({"failed", "rolled_back"})


def _find(api: ApiClient, deployment: dict[str, Any]) -> dict[str, Any]:
    rows = api.get("/api/deployments", device=deployment["device"], limit=1000)
    for row in rows:
        if row["id"] == deployment["id"]:
            return dict(row)
    raise Refused(f"deployment {deployment['id']} is no longer listed")


def wait_for(
    api: ApiClient,
    deployment: dict[str, Any],
    timeout: float,
    interval: float,
    console: Console | None,
) -> dict[str, Any]:
    """Poll the deployment until it is final (running, failed, rolled back) or `timeout`
    seconds pass; a stage bar on `console` meanwhile. Its last state."""
    deadline = time.monotonic() + timeout
    if console is None:
        while deployment["status"] != SUCCEEDED and deployment["status"] not in FAILED:
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
            deployment = _find(api, deployment)
        return deployment

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[stage]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task(
            f"{deployment['device']} ← {deployment['bundle'][:12]}", total=len(STAGES) - 1, stage=""
        )
        while True:
            status = deployment["status"]
            step = STAGES.index(status) if status in STAGES else len(STAGES) - 1
            progress.update(task, completed=step, stage=status)
            if status == SUCCEEDED or status in FAILED or time.monotonic() >= deadline:
                return deployment
            time.sleep(interval)
            deployment = _find(api, deployment)


def cmd_deploy(args: argparse.Namespace) -> int:
    with client(args) as api:
        digest = resolve_bundle(api, args.bundle)
        body = {"device": args.device, "bundle": digest, "transport": args.transport}
        deployment = api.request("POST", "/api/deployments", json=body)
        if args.wait:
            deployment = wait_for(api, deployment, args.timeout, args.interval, progress_console())
    emit(args, deployment, DEPLOYMENT_COLUMNS)
    if not args.wait or deployment["status"] == SUCCEEDED:
        return EXIT_OK
    if deployment["status"] in FAILED:
        reason = f": {deployment['reason']}" if deployment["reason"] else ""
        print(f"edgefleet: deployment {deployment['status']}{reason}", file=sys.stderr)
    else:
        print(
            f"edgefleet: deployment still {deployment['status']} after {args.timeout:g} s",
            file=sys.stderr,
        )
    return EXIT_REFUSED


def cmd_deployments(args: argparse.Namespace) -> int:
    rows = api_get(args, "/api/deployments", limit=args.limit, device=args.device)
    emit(args, rows, DEPLOYMENT_COLUMNS)
    return EXIT_OK


def add_deploy_parsers(subparsers: Any) -> None:
    """`deploy` and `deployments`."""
    deploy = subparsers.add_parser(
        "deploy",
        help="deploy a stored bundle to a device",
        description="Deploy a stored bundle to a device. With --wait, follow it until it runs "
        "(exit 0) or fails or is rolled back (exit 1); exit 1 too if it is not final in time.",
    )
    add_api_options(deploy)
    deploy.add_argument("device")
    deploy.add_argument("bundle", metavar="BUNDLE", help="name@version or a unique digest prefix")
    deploy.add_argument(
        "--transport",
        choices=("auto", "mqtt", "http"),
        default="auto",
        help="MQTT chunks or HTTP range download (auto: HTTP for large bundles)",
    )
    deploy.add_argument("--wait", action="store_true", help="follow it until it is final")
    deploy.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="with --wait (default 600)"
    )
    deploy.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    deploy.set_defaults(func=cmd_deploy)

    deployments = subparsers.add_parser("deployments", help="list deployments")
    add_api_options(deployments)
    deployments.add_argument("--limit", type=int, default=50)
    deployments.add_argument("--device", default=None)
    deployments.set_defaults(func=cmd_deployments)
