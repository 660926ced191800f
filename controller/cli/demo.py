"""`edgefleet demo`: controller + local broker + one local agent on a sample video, one command.

The demo needs the controller's server packages and the sample video's (numpy, OpenCV,
scikit-image); they are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.cli.client import EXIT_OK, EXIT_REFUSED, missing_extra

EXIT_DEMO_FAILED = EXIT_REFUSED


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from controller.demo.run import DemoError, run_demo
    except ModuleNotFoundError as exc:
        missing_extra("demo", "controller,demo", exc)

    try:
        result = run_demo(args.duration, args.workdir, args.http_port, args.simulated)
    except DemoError as exc:
        print(f"edgefleet demo: {exc}", file=sys.stderr)
        return EXIT_DEMO_FAILED
    print(result.line(), flush=True)
    return EXIT_OK if result.detections > 0 else EXIT_DEMO_FAILED


def add_demo_parser(subparsers: Any) -> None:
    """`demo`."""
    parser = subparsers.add_parser(
        "demo", help="controller + local broker + a local agent on a sample video"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    parser.add_argument("--workdir", type=Path, default=Path(".edgefleet/demo"))
    parser.add_argument("--http-port", type=int, default=None, help="API port (default: free)")
    parser.add_argument(
        "--simulated",
        type=int,
        default=50,
        help="simulated devices beside the real agent, rolled to a new bundle version (0: none)",
    )
    parser.set_defaults(func=cmd_demo)
