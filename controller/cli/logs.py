"""`edgefleet logs DEVICE [--follow]`: a device's events as lines, oldest first, and with
`--follow` each new one as the controller receives it.

What a device reports arrives as events (deploy stages, errors, command answers); an agent's
own log lines, when it sends them, are events of kind `log` and show here the same way. The
controller is polled with a cursor on the time it received each event (`/api/events?since=`),
looking a little back each time so an event committed late is not skipped, and printing each
event once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from controller.cli.client import (
    EXIT_OK,
    ApiClient,
    add_api_options,
    client,
    local_time,
    positive_int,
)

# how far back each poll looks again: ingest commits in batches, so an event received just
# before the newest one seen may be committed just after it was read
LOOKBACK_S = 5.0
PAGE = 500


def line(event: dict[str, Any]) -> str:
    """One event as one line of text (newlines in the message are kept on that line)."""
    parts = [local_time(event["ts"]), event["level"].upper(), event["kind"]]
    if event.get("reason"):
        parts.append(f"[{event['reason']}]")
    if event.get("bundle"):
        parts.append(f"bundle={event['bundle'][:12]}")
    message = " ".join(str(event.get("message") or "").split())
    return " ".join([*parts, message]).rstrip()


def _print(args: argparse.Namespace, event: dict[str, Any]) -> None:
    sys.stdout.write((json.dumps(event) if args.output == "json" else line(event)) + "\n")


class Follower:
    """New events of one device from the controller, each once, in the order received."""

    def __init__(self, api: ApiClient, device: str, kind: str | None, cursor: float) -> None:
        self.api, self.device, self.kind = api, device, kind
        self.cursor = cursor
        self.seen: dict[str, float] = {}

    def mark(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.seen[event["id"]] = event["received"]
            self.cursor = max(self.cursor, event["received"])

    def poll(self) -> list[dict[str, Any]]:
        """The events not returned before, oldest first."""
        fresh: list[dict[str, Any]] = []
        since = max(0.0, self.cursor - LOOKBACK_S)
        while True:
            rows = self.api.get(
                "/api/events", device=self.device, kind=self.kind, since=since, limit=PAGE
            )
            new = [r for r in rows if r["id"] not in self.seen]
            self.mark(new)
            fresh.extend(new)
            if len(rows) < PAGE:
                break
            # a full page: go on from its end rather than look back into it again
            since = rows[-1]["received"]
        horizon = self.cursor - 2 * LOOKBACK_S
        self.seen = {k: v for k, v in self.seen.items() if v >= horizon}
        return fresh


def cmd_logs(args: argparse.Namespace) -> int:
    with client(args) as api:
        api.get(f"/api/devices/{args.device}")  # an unknown device is a clear 404
        tail = api.get("/api/events", device=args.device, kind=args.kind, limit=args.tail)
        tail.reverse()
        for event in tail:
            _print(args, event)
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        follower = Follower(api, args.device, args.kind, 0.0)
        follower.mark(tail)
        while True:
            for event in follower.poll():
                _print(args, event)
            sys.stdout.flush()
            if args.once:
                return EXIT_OK
            time.sleep(args.interval)


def add_logs_parser(subparsers: Any) -> None:
    """`logs`."""
    logs = subparsers.add_parser(
        "logs",
        help="a device's events and agent log lines (--follow: as they arrive)",
        description="A device's events, oldest first: deploy stages, errors, answers to "
        "commands, and the agent's log lines (events of kind `log`). With --follow, new ones "
        "are printed as the controller receives them until interrupted.",
    )
    add_api_options(logs)
    logs.add_argument("device", metavar="DEVICE")
    logs.add_argument("-f", "--follow", action="store_true", help="print new events as they come")
    logs.add_argument(
        "-n", "--tail", type=positive_int, default=20, help="how many past events first"
    )
    logs.add_argument("--kind", default=None, help="only this kind (e.g. log, error, ack)")
    logs.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    logs.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    logs.set_defaults(func=cmd_logs)
