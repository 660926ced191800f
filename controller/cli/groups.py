"""`edgefleet group`, `tag`, `decommission`, `targets`, and the commands to one device or a
whole group: `rollback`, `set-config`, `restart-pipeline`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from controller.cli.client import (
    EXIT_OK,
    Column,
    UsageError,
    add_api_options,
    ago,
    api_get,
    api_request,
    emit,
)

GROUP_COLUMNS: list[Column] = [
    ("group", lambda r: r["name"]),
    ("selector", lambda r: json.dumps(r["selector"], sort_keys=True)),
    ("devices", lambda r: str(len(r["devices"]))),
]
INVENTORY_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("tags", lambda r: ",".join(r["tags"]) or "-"),
    ("declared", lambda r: ",".join(r.get("declared_tags", [])) or "-"),
    ("decommissioned", lambda r: "yes" if r["decommissioned"] else "no"),
]
TARGET_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("target", lambda r: r["bundle"][:12]),
    ("running", lambda r: (r["active"] or "-")[:12]),
    ("state", lambda r: "drift" if r["drift"] else "converged" if r["converged"] else "pending"),
    ("deployment", lambda r: r["deployment_status"] or "-"),
    ("rollout", lambda r: r["rollout"] or "-"),
    ("set", lambda r: ago(r["set_at"])),
]
SENT_COLUMNS: list[Column] = [
    ("device", lambda r: r["device"]),
    ("command", lambda r: r["cmd_id"] or "-"),
    ("error", lambda r: r["error"] or "-"),
]


def add_selector_options(parser: argparse.ArgumentParser) -> None:
    """Flags that build a selector: every one given must match."""
    parser.add_argument("--group", default=None, help="members of this saved group")
    parser.add_argument("--device", action="append", default=[], help="this device (repeatable)")
    parser.add_argument("--tag", action="append", default=[], help="has this tag (repeatable)")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--runtime", default=None, help="can run this runtime")
    parser.add_argument("--agent-version", default=None)
    parser.add_argument("--running", default=None, help="runs this bundle (name@version|digest)")
    parser.add_argument(
        "--online", action=argparse.BooleanOptionalAction, default=None, help="is (not) online"
    )


def selector_from(args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "group": args.group,
        "devices": args.device,
        "tags": args.tag,
        "profile": args.profile,
        "runtime": args.runtime,
        "agent_version": args.agent_version,
        "bundle": args.running,
        "online": args.online,
    }
    return {k: v for k, v in fields.items() if v not in (None, [])}


def cmd_group_list(args: argparse.Namespace) -> int:
    emit(args, api_get(args, "/api/groups"), GROUP_COLUMNS)
    return EXIT_OK


def cmd_group_show(args: argparse.Namespace) -> int:
    group = api_get(args, f"/api/groups/{args.name}")
    emit(args, group, GROUP_COLUMNS)
    if args.output != "json":
        print("members: " + (" ".join(group["devices"]) or "-"))
    return EXIT_OK


def cmd_group_set(args: argparse.Namespace) -> int:
    body = selector_from(args)
    body.pop("group", None)
    emit(args, api_request(args, "PUT", f"/api/groups/{args.name}", json=body), GROUP_COLUMNS)
    return EXIT_OK


def cmd_group_delete(args: argparse.Namespace) -> int:
    api_request(args, "DELETE", f"/api/groups/{args.name}")
    emit(args, {"name": args.name, "deleted": True}, [("group", lambda r: r["name"])])
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    body = {"add": args.add, "remove": args.remove}
    row = api_request(args, "POST", f"/api/devices/{args.device_id}/tags", json=body)
    emit(args, row, INVENTORY_COLUMNS)
    return EXIT_OK


def cmd_decommission(args: argparse.Namespace) -> int:
    body = {"decommissioned": not args.undo}
    row = api_request(args, "POST", f"/api/devices/{args.device_id}/decommission", json=body)
    emit(args, row, INVENTORY_COLUMNS)
    return EXIT_OK


def cmd_targets(args: argparse.Namespace) -> int:
    rows = api_get(args, "/api/targets", device=args.device, drift=args.drift or None)
    emit(args, rows, TARGET_COLUMNS)
    return EXIT_OK


def _action(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        if (args.device_id is None) == (args.group is None):
            raise UsageError(f"{name}: give a DEVICE or --group, not both")
        body: dict[str, Any] = {}
        if name == "set-config":
            try:
                body["config"] = json.loads(args.config)
            except ValueError as exc:
                raise UsageError(f"set-config: --config is not JSON ({exc})") from None
        where = f"/api/devices/{args.device_id}" if args.device_id else f"/api/groups/{args.group}"
        rows = api_request(args, "POST", f"{where}/{name}", json=body or None)
        emit(args, rows, SENT_COLUMNS)
        return EXIT_OK

    return run


def add_groups_parsers(subparsers: Any) -> None:
    """`group`, `tag`, `decommission`, `targets`, `rollback`, `set-config`, `restart-pipeline`."""
    group = subparsers.add_parser("group", help="groups: saved device selectors")
    sub = group.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="list groups")
    add_api_options(listing)
    listing.set_defaults(func=cmd_group_list)
    show = sub.add_parser("show", help="a group and its members now")
    show.add_argument("name")
    add_api_options(show)
    show.set_defaults(func=cmd_group_show)
    setter = sub.add_parser("set", help="create or replace a group")
    setter.add_argument("name")
    add_selector_options(setter)
    add_api_options(setter)
    setter.set_defaults(func=cmd_group_set)
    delete = sub.add_parser("delete", help="delete a group")
    delete.add_argument("name")
    add_api_options(delete)
    delete.set_defaults(func=cmd_group_delete)

    tag = subparsers.add_parser("tag", help="add or remove a device's tags")
    tag.add_argument("device_id", metavar="DEVICE")
    tag.add_argument("--add", action="append", default=[])
    tag.add_argument("--remove", action="append", default=[])
    add_api_options(tag)
    tag.set_defaults(func=cmd_tag)

    decommission = subparsers.add_parser("decommission", help="take a device out of every selector")
    decommission.add_argument("device_id", metavar="DEVICE")
    decommission.add_argument("--undo", action="store_true", help="bring it back")
    add_api_options(decommission)
    decommission.set_defaults(func=cmd_decommission)

    targets = subparsers.add_parser("targets", help="each device's target beside what it runs")
    targets.add_argument("--device", default=None)
    targets.add_argument("--drift", action="store_true", help="only devices that drifted")
    add_api_options(targets)
    targets.set_defaults(func=cmd_targets)

    for name, text in (
        ("rollback", "switch a device (or a group) back to its previous bundle"),
        ("set-config", "apply agent settings to a device (or a group)"),
        ("restart-pipeline", "restart the detection pipeline of a device (or a group)"),
    ):
        action = subparsers.add_parser(name, help=text)
        action.add_argument("device_id", metavar="DEVICE", nargs="?", default=None)
        action.add_argument("--group", default=None, help="every member of this group")
        if name == "set-config":
            action.add_argument("--config", required=True, help='JSON, e.g. {"log_level": "debug"}')
        add_api_options(action)
        action.set_defaults(func=_action(name))
