"""`edgefleet controller run`: serve the API and the MQTT ingest until stopped.

The server's packages (FastAPI, SQLAlchemy, uvicorn, paho) are imported only when the command
runs, so the rest of the CLI works where only the CLI's own packages are installed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.cli.client import EXIT_API_ERROR, EXIT_OK, EXIT_USAGE, missing_extra
from protocol.logs import configure_logging


def cmd_controller_run(args: argparse.Namespace) -> int:
    try:
        from controller.server import Controller, ControllerError
        from controller.settings import load_settings
        from controller.tuning import limit_malloc_arenas, tune_gc
    except ModuleNotFoundError as exc:
        missing_extra("controller run", "controller", exc)

    try:
        settings = load_settings(args.config)
    except (OSError, ValueError, ValidationError) as exc:
        print(f"edgefleet: bad controller settings: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # one handler for the controller and its libraries (uvicorn, paho, SQLAlchemy, APScheduler)
    configure_logging(logging.INFO, settings.log_format)
    limit_malloc_arenas()  # before the controller starts its threads
    try:
        controller = Controller(settings)
        tune_gc()  # what is built so far lives as long as the process
        controller.serve_forever()
    except ControllerError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    return EXIT_OK


def add_controller_parser(subparsers: Any) -> None:
    """`controller run`."""
    parser = subparsers.add_parser("controller", help="run the controller")
    sub = parser.add_subparsers(dest="controller_command", required=True)
    run = sub.add_parser("run", help="serve the API and the MQTT ingest until stopped")
    run.add_argument("--config", type=Path, default=None, help="settings file (JSON or TOML)")
    run.set_defaults(func=cmd_controller_run)
