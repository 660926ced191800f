"""`edgefleet`: the operator's command line, over the controller's REST API.

Each area registers its subcommands with an `add_<name>_parser(subparsers)` function that sets
`func` (taking the parsed args, returning the exit code). Areas in other modules are listed in
EXTENSIONS and imported when the parser is built; one whose imports fail still shows up and
says why it cannot run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_API = "http://127.0.0.1:8080"
EXIT_OK, EXIT_API_ERROR, EXIT_UNREACHABLE = 0, 1, 2

Registrar = Callable[[Any], None]
Column = tuple[str, Callable[[dict[str, Any]], str]]

# (module, registrar) for subcommands that live beside their own code
EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("controller.demo.run", "add_demo_parser"),
    ("controller.cli.keys", "add_keys_parser"),
    ("controller.cli.release", "add_models_parser"),
    ("controller.cli.trust", "add_trust_parser"),
)
# (module, registrar) for `edgefleet bundle <sub>` subcommands living elsewhere
BUNDLE_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("controller.cli.release", "add_bundle_build_parser"),
    ("controller.release.inspect", "add_bundle_inspect_parser"),
)


class ControllerUnreachable(Exception):
    """No answer from the controller at all (refused, timed out, bad address)."""


class ApiError(Exception):
    """The controller answered with an error status."""

    def __init__(self, status: int, detail: Any) -> None:
        if isinstance(detail, dict) and "reason" in detail:
            detail = f"{detail['reason']}: {detail.get('detail', '')}"
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class ApiClient:
    """A thin REST client; every transport failure becomes ControllerUnreachable."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=3))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ControllerUnreachable(
                f"cannot reach the controller at {self.base_url} ({reason})"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def close(self) -> None:
        self._http.close()


def client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.api)


# ---- output ---------------------------------------------------------------------------------


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def emit(args: argparse.Namespace, data: Any, columns: Sequence[Column]) -> None:
    """Print `data` (a dict or a list of dicts) as JSON or as a table."""
    if args.output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(box=None, header_style="bold")
    for header, _ in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*(cell(row) for _, cell in columns))
    Console().print(table)


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """--api and --output, accepted after a subcommand as well as before it."""
    parser.add_argument("--api", default=argparse.SUPPRESS, help="controller URL")
    parser.add_argument(
        "--output", choices=("table", "json"), default=argparse.SUPPRESS, help="output format"
    )


# ---- controller -----------------------------------------------------------------------------


def cmd_controller_run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from controller.server import Controller, ControllerError
    from controller.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(args.config)
    except (OSError, ValueError, ValidationError) as exc:
        print(f"edgefleet: bad controller settings: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        Controller(settings).serve_forever()
    except ControllerError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    return EXIT_OK


def add_controller_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("controller", help="run the controller")
    sub = parser.add_subparsers(dest="controller_command", required=True)
    run = sub.add_parser("run", help="serve the API and the MQTT ingest until stopped")
    run.add_argument("--config", type=Path, default=None, help="settings file (JSON or TOML)")
    run.set_defaults(func=cmd_controller_run)


# ---- devices, detections, events ------------------------------------------------------------

DEVICE_COLUMNS: list[Column] = [
    ("device", lambda r: r["id"]),
    ("online", lambda r: "yes" if r["online"] else "no"),
    ("profile", lambda r: r["profile"] or "-"),
    ("agent", lambda r: r["agent_version"] or "-"),
    ("bundle", lambda r: f"{r['active_name']}@{r['active_version']}" if r["active_name"] else "-"),
    ("runtime", lambda r: r["active_runtime"] or "-"),
    ("last seen", lambda r: _age(r["last_seen"])),
]


def cmd_devices(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/devices"), DEVICE_COLUMNS)
    return EXIT_OK


def cmd_detections(args: argparse.Namespace) -> int:
    rows = client(args).get(
        "/api/detections", limit=args.limit, device=args.device, label=args.label
    )
    emit(
        args,
        rows,
        [
            ("time", lambda r: _when(r["ts"])),
            ("device", lambda r: r["device"]),
            ("camera", lambda r: r["camera"]),
            ("label", lambda r: r["label"]),
            ("score", lambda r: f"{r['score']:.2f}"),
            ("box", lambda r: f"{r['x1']:.2f},{r['y1']:.2f} {r['x2']:.2f},{r['y2']:.2f}"),
        ],
    )
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    rows = client(args).get("/api/events", limit=args.limit, device=args.device, kind=args.kind)
    emit(
        args,
        rows,
        [
            ("time", lambda r: _when(r["ts"])),
            ("device", lambda r: r["device"]),
            ("kind", lambda r: r["kind"]),
            ("level", lambda r: r["level"]),
            ("bundle", lambda r: (r["bundle"] or "-")[:12]),
            ("reason", lambda r: r["reason"] or "-"),
            ("message", lambda r: r["message"]),
        ],
    )
    return EXIT_OK


def add_devices_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("devices", help="list devices")
    add_api_options(parser)
    parser.set_defaults(func=cmd_devices)


def add_detections_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("detections", help="latest detections")
    add_api_options(parser)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--device", default=None)
    parser.add_argument("--label", default=None)
    parser.set_defaults(func=cmd_detections)


def add_events_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("events", help="latest device events")
    add_api_options(parser)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--device", default=None)
    parser.add_argument("--kind", default=None)
    parser.set_defaults(func=cmd_events)


# ---- bundles and deployments ----------------------------------------------------------------

BUNDLE_COLUMNS: list[Column] = [
    ("digest", lambda r: r["digest"][:12]),
    ("name", lambda r: r["name"]),
    ("version", lambda r: str(r["version"])),
    ("size", lambda r: f"{r['size'] / 1024:.0f} KiB"),
    ("variants", lambda r: " ".join(r["variants"])),
    ("stored", lambda r: _when(r["created"])),
]
DEPLOYMENT_COLUMNS: list[Column] = [
    ("deployment", lambda r: r["id"][:12]),
    ("device", lambda r: r["device"]),
    ("bundle", lambda r: r["bundle"][:12]),
    ("status", lambda r: r["status"]),
    ("reason", lambda r: r["reason"] or "-"),
    ("updated", lambda r: _when(r["updated"])),
]


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as src:
        while block := src.read(1 << 20):
            yield block


def cmd_bundles(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/bundles"), BUNDLE_COLUMNS)
    return EXIT_OK


def cmd_bundle_upload(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        print(f"edgefleet: no such file: {path}", file=sys.stderr)
        return EXIT_UNREACHABLE
    api = ApiClient(args.api, timeout=600.0)
    headers = {"content-type": "application/octet-stream"}
    emit(
        args,
        api.request("POST", "/api/bundles", content=_blocks(path), headers=headers),
        BUNDLE_COLUMNS,
    )
    return EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    body = {"device": args.device, "bundle": args.digest, "transport": args.transport}
    emit(args, client(args).request("POST", "/api/deployments", json=body), DEPLOYMENT_COLUMNS)
    return EXIT_OK


def cmd_deployments(args: argparse.Namespace) -> int:
    rows = client(args).get("/api/deployments", limit=args.limit, device=args.device)
    emit(args, rows, DEPLOYMENT_COLUMNS)
    return EXIT_OK


def add_bundles_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("bundles", help="list stored bundles")
    add_api_options(parser)
    parser.set_defaults(func=cmd_bundles)


def add_bundle_upload_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("upload", help="upload a signed bundle file")
    add_api_options(parser)
    parser.add_argument("file", type=Path)
    parser.set_defaults(func=cmd_bundle_upload)


def add_bundle_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("bundle", help="work with one bundle")
    sub = parser.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    add_bundle_upload_parser(sub)
    _load_extensions(sub, BUNDLE_EXTENSIONS)


def add_deploy_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("deploy", help="deploy a stored bundle to a device")
    add_api_options(parser)
    parser.add_argument("device")
    parser.add_argument("digest")
    parser.add_argument(
        "--transport",
        choices=("auto", "mqtt", "http"),
        default="auto",
        help="MQTT chunks or HTTP range download (auto: HTTP for large bundles)",
    )
    parser.set_defaults(func=cmd_deploy)


def add_deployments_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("deployments", help="list deployments")
    add_api_options(parser)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--device", default=None)
    parser.set_defaults(func=cmd_deployments)


# ---- the parser -----------------------------------------------------------------------------

REGISTRARS: tuple[Registrar, ...] = (
    add_controller_parser,
    add_devices_parser,
    add_detections_parser,
    add_events_parser,
    add_bundles_parser,
    add_bundle_parser,
    add_deploy_parser,
    add_deployments_parser,
)


def _unavailable(name: str, why: str) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        print(f"edgefleet: `{name}` is unavailable here: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE

    return run


def _load_extensions(subparsers: Any, extensions: Sequence[tuple[str, str]]) -> None:
    for module_name, function in extensions:
        try:
            registrar: Registrar = getattr(importlib.import_module(module_name), function)
        except ImportError as exc:
            name = function.removeprefix("add_").removesuffix("_parser").replace("_", "-")
            stub = subparsers.add_parser(name, help=f"(unavailable: {exc})")
            stub.set_defaults(func=_unavailable(name, str(exc)))
            continue
        registrar(subparsers)


def build_parser() -> argparse.ArgumentParser:
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
    _load_extensions(subparsers, EXTENSIONS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `edgefleet` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ControllerUnreachable as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ApiError as exc:
        print(f"edgefleet: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
