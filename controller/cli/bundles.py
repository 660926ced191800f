"""`edgefleet bundles` and `edgefleet bundle build|inspect|upload`: bundles on the workstation
(build and sign one from a spec, show what a file claims and whether it verifies) and on the
controller (upload with a progress bar, list, show one by `name@version` or digest prefix)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from controller.cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    ApiClient,
    Column,
    UsageError,
    add_api_options,
    api_get,
    client,
    emit,
    file_blocks,
    local_time,
    missing_extra,
    progress_console,
    resolve_bundle,
)
from controller.release.inspect import UnreadableBundle, inspect_report
from controller.release.models import ModelFetchError
from controller.release.recipes import load_spec
from controller.release.variants import OpenVinoUnavailable, VariantGenerationError
from ota.build import build_bundle
from ota.keys import SigningKey

EXIT_BUILD_FAILED = EXIT_REFUSED
EXIT_UNREADABLE = EXIT_USAGE

BUNDLE_COLUMNS: list[Column] = [
    ("digest", lambda r: r["digest"][:12]),
    ("name", lambda r: r["name"]),
    ("version", lambda r: str(r["version"])),
    ("size", lambda r: f"{r['size'] / 1024:.0f} KiB"),
    ("variants", lambda r: " ".join(r["variants"])),
    ("stored", lambda r: local_time(r["created"])),
]


def cmd_bundles(args: argparse.Namespace) -> int:
    emit(args, api_get(args, "/api/bundles"), BUNDLE_COLUMNS)
    return EXIT_OK


def upload(api: ApiClient, path: Path, console: Console | None) -> Any:
    """Stream the file to the controller, with a progress bar on `console` when given."""
    headers = {"content-type": "application/octet-stream"}
    if console is None:
        return api.request("POST", "/api/bundles", content=file_blocks(path), headers=headers)
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"upload {path.name}", total=path.stat().st_size)
        blocks = file_blocks(path, lambda n: progress.advance(task, n), size=1 << 18)
        answer = api.request("POST", "/api/bundles", content=blocks, headers=headers)
        progress.update(task, description="verified and stored")
        return answer


def cmd_bundle_upload(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    with client(args, timeout=600.0) as api:
        answer = upload(api, path, progress_console())
    emit(args, answer, BUNDLE_COLUMNS)
    return EXIT_OK


def _print_stored(bundle: dict[str, Any]) -> None:
    manifest = bundle.get("manifest") or {}
    compatibility = manifest.get("compatibility") or {}
    print(f"bundle    {bundle['name']}@{bundle['version']}  ({bundle['size']} bytes)")
    print(f"digest    {bundle['digest']}")
    print(f"stored    {local_time(bundle['created'])}")
    print(f"chunks    {bundle['chunks']} x {bundle['chunk_size']} bytes")
    for key in ("created", "expires"):
        if key in manifest:
            print(f"{key:<9} {manifest[key]}")
    print(f"profiles  {', '.join(compatibility.get('profiles') or []) or 'any'}")
    for variant in manifest.get("variants", []):
        runtime = f"{variant.get('runtime')}/{variant.get('precision', 'fp32')}"
        print(f"variant   {runtime}  model={variant.get('model')}")
    files = manifest.get("files")
    for entry in files.values() if isinstance(files, dict) else files or []:
        if isinstance(entry, dict):
            print(f"file      {entry.get('path')}  {entry.get('size')} bytes")


def cmd_bundle_show(args: argparse.Namespace) -> int:
    """A stored bundle, named by `name@version` or a unique digest prefix."""
    with client(args) as api:
        bundle = api.get(f"/api/bundles/{resolve_bundle(api, args.bundle)}")
    if args.output == "json":
        emit(args, bundle, BUNDLE_COLUMNS)
    else:
        _print_stored(bundle)
    return EXIT_OK


def cmd_bundle_build(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.version is not None:
        overrides["version"] = args.version
    try:
        spec = load_spec(args.spec, **overrides)
        keys = [SigningKey.load(path) for path in args.key]
        built = build_bundle(spec, args.spec.parent, keys, args.out, datetime.now(timezone.utc))
    except OpenVinoUnavailable as exc:
        missing = exc.__cause__
        if isinstance(missing, ModuleNotFoundError):
            missing_extra("bundle build", OpenVinoUnavailable.extra, missing)
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    except (ModelFetchError, VariantGenerationError, ValueError, OSError) as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_BUILD_FAILED
    print(f"{built.manifest.name}@{built.manifest.version} → {built.path}")
    print(
        f"digest {built.digest}  size {built.size}  variants "
        + ",".join(v.runtime for v in built.manifest.variants)
    )
    return EXIT_OK


def _print_report(report: dict[str, Any]) -> None:
    print(f"bundle    {report['name']}@{report['version']}  ({report['size']} bytes)")
    print(f"created   {report['created']}")
    print(f"expires   {report['expires']}")
    print(f"profiles  {', '.join(report['profiles']) or 'any'}")
    for v in report["variants"]:
        print(f"variant   {v['runtime']}/{v['precision']}  model={v['model']}")
    for f in report["files"]:
        print(f"file      {f['path']}  {f['size']} bytes  sha256={f['sha256']}")
    for keyid in report["signatures"]:
        print(f"signed by {keyid}")
    v = report["verdict"]
    reason = f" {v['reason']}" if v["reason"] else ""
    print(f"verdict   {v['status']}{reason}: {v['detail']}")


def cmd_bundle_inspect(args: argparse.Namespace) -> int:
    if not args.file.exists():
        raise UsageError(
            f"no such file: {args.file} (a bundle on the controller: `edgefleet bundle show REF`)"
        )
    try:
        report = inspect_report(args.file, args.trust, datetime.now(timezone.utc))
    except (UnreadableBundle, OSError) as exc:
        print(f"edgefleet: {args.file}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if getattr(args, "output", "table") == "json":
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return EXIT_REFUSED if report["verdict"]["status"] == "refused" else EXIT_OK


def add_bundles_parsers(subparsers: Any) -> None:
    """`bundles`, and `bundle` with its subcommands `upload`, `show`, `build` and `inspect`."""
    listing = subparsers.add_parser("bundles", help="list stored bundles")
    add_api_options(listing)
    listing.set_defaults(func=cmd_bundles)

    parser = subparsers.add_parser("bundle", help="work with one bundle")
    sub = parser.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")

    uploading = sub.add_parser("upload", help="upload a signed bundle file")
    add_api_options(uploading)
    uploading.add_argument("file", type=Path)
    uploading.set_defaults(func=cmd_bundle_upload)

    show = sub.add_parser("show", help="a stored bundle: name@version or a digest prefix")
    add_api_options(show)
    show.add_argument("bundle", metavar="BUNDLE")
    show.set_defaults(func=cmd_bundle_show)

    build = sub.add_parser("build", help="build and sign a bundle from a spec")
    build.add_argument("spec", type=Path, help="bundle spec YAML")
    build.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="release key PEM (repeat for a threshold)",
    )
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--version", type=int, default=None, help="override the spec's version")
    build.set_defaults(func=cmd_bundle_build)

    inspect = sub.add_parser("inspect", help="show a bundle's manifest and verify it")
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--trust", type=Path, default=None, help="root.json or trust.json to verify against"
    )
    inspect.set_defaults(func=cmd_bundle_inspect)
