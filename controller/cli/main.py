"""`edgefleet`: the operator's command line, over the controller's REST API.

The parser is built from one module per command group; each has an `add_..._parser(s)`
function that registers its subcommands with a `func` taking the parsed args and returning the
exit code. Commands that need optional packages import them when they run and say which extra
to install when they are missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller.cli.audit import add_audit_parser
from controller.cli.broker import add_broker_parser
from controller.cli.bundles import add_bundles_parsers
from controller.cli.client import default_api, run_command
from controller.cli.completion import add_completion_parser
from controller.cli.controller import add_controller_parser
from controller.cli.demo import add_demo_parser
from controller.cli.deploy import add_deploy_parsers
from controller.cli.devices import add_devices_parsers
from controller.cli.groups import add_groups_parsers
from controller.cli.keys import add_keys_parser
from controller.cli.logs import add_logs_parser
from controller.cli.models import add_models_parser
from controller.cli.rollout import add_rollout_parser
from controller.cli.sim import add_sim_parser
from controller.cli.trust import add_trust_parser
from controller.cli.users import add_users_parsers

EXIT_CODES = """exit codes:
  0  done
  1  refused by the controller (HTTP 4xx, 403 included), or what was asked for failed
  2  usage: a bad command line or argument, or a command whose extra is not installed
  3  controller unreachable: no connection, a timeout, TLS failure or HTTP 5xx
  4  not authenticated (HTTP 401): run `edgefleet login` or set EDGEFLEET_TOKEN"""

# in the order `edgefleet --help` lists them
REGISTRARS: tuple[Callable[[Any], None], ...] = (
    add_controller_parser,
    add_devices_parsers,
    add_broker_parser,
    add_bundles_parsers,
    add_deploy_parsers,
    add_rollout_parser,
    add_groups_parsers,
    add_demo_parser,
    add_sim_parser,
    add_keys_parser,
    add_models_parser,
    add_trust_parser,
    add_users_parsers,
    add_audit_parser,
    add_logs_parser,
    add_completion_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The `edgefleet` parser with every command group."""
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Operate an edgefleet controller and its devices.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--api",
        default=None,
        help="controller URL (env EDGEFLEET_API, else the one `login` kept, else "
        "http://127.0.0.1:8080)",
    )
    parser.add_argument("--output", choices=("table", "json"), default="table")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for registrar in REGISTRARS:
        registrar(subparsers)
    # the completion command walks the whole tree; it gets it here, not by importing main
    parser.set_defaults(root_parser=parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edgefleet` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.api is None:
        args.api = default_api()
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
