"""`edgefleet`: the operator's command line, over the controller's REST API.

The parser is built from one module per command group; each has an `add_..._parser(s)`
function that registers its subcommands with a `func` taking the parsed args and returning the
exit code. Commands that need optional packages import them when they run and say which extra
to install when they are missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from controller.cli.audit import add_audit_parser
from controller.cli.broker import add_broker_parser
from controller.cli.bundles import add_bundles_parsers
from controller.cli.client import (
    DEFAULT_API,
    EXIT_API_ERROR,
    EXIT_NOT_AUTHENTICATED,
    EXIT_NOT_INSTALLED,
    EXIT_UNREACHABLE,
    ApiError,
    ControllerUnreachable,
    MissingExtra,
    NotAuthenticated,
)
from controller.cli.controller import add_controller_parser
from controller.cli.demo import add_demo_parser
from controller.cli.deploy import add_deploy_parsers
from controller.cli.devices import add_devices_parsers
from controller.cli.groups import add_groups_parsers
from controller.cli.keys import add_keys_parser
from controller.cli.models import add_models_parser
from controller.cli.rollout import add_rollout_parser
from controller.cli.sim import add_sim_parser
from controller.cli.trust import add_trust_parser
from controller.cli.users import add_users_parsers

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
)


def build_parser() -> argparse.ArgumentParser:
    """The `edgefleet` parser with every command group."""
    parser = argparse.ArgumentParser(
        prog="edgefleet", description="Operate an edgefleet controller and its devices."
    )
    parser.add_argument(
        "--api",
        default=os.environ.get("EDGEFLEET_API", DEFAULT_API),
        help="controller URL (env EDGEFLEET_API; default %(default)s)",
    )
    parser.add_argument("--output", choices=("table", "json"), default="table")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for registrar in REGISTRARS:
        registrar(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edgefleet` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ControllerUnreachable as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except NotAuthenticated as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_NOT_AUTHENTICATED
    except ApiError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    except MissingExtra as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
