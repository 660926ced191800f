"""What every `edgefleet` command shares: the REST client and its errors, exit codes, the
`--api`/`--output` options, output as a table or JSON, and the error for a missing extra.

Only the CLI's own dependencies (httpx, rich) are imported here, so listing devices works on a
workstation without the controller's server packages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_API = "http://127.0.0.1:8080"
EXIT_OK, EXIT_API_ERROR, EXIT_UNREACHABLE = 0, 1, 2
# a command whose optional packages are missing cannot run at all, like one without a controller
EXIT_NOT_INSTALLED = 2

Column = tuple[str, Callable[[dict[str, Any]], str]]
"""A table column: its header and how to render a row's cell."""

_OUR_PACKAGES = frozenset({"protocol", "ota", "device_profiles", "agent", "controller"})


class ControllerUnreachable(Exception):
    """No answer from the controller at all (refused, timed out, bad address)."""


class ApiError(Exception):
    """The controller answered with an error status."""

    def __init__(self, status: int, detail: Any) -> None:
        if isinstance(detail, dict) and "reason" in detail:
            detail = f"{detail['reason']}: {detail.get('detail', '')}"
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class MissingExtra(Exception):
    """A command needs optional packages (an extra of the distribution) not installed here."""

    def __init__(self, command: str, extras: str, module: str) -> None:
        super().__init__(
            f"`{command}` needs packages that are not installed here (no module {module!r}): "
            f"pip install 'edgefleet[{extras}]'"
        )
        self.command = command
        self.extras = extras
        self.module = module


def missing_extra(command: str, extras: str, error: ModuleNotFoundError) -> NoReturn:
    """Raise MissingExtra for a third-party module that failed to import; re-raise `error` when
    the missing module is one of ours, since that is a broken install, not a missing extra."""
    module = error.name or ""
    if not module or module.split(".")[0] in _OUR_PACKAGES:
        raise error
    raise MissingExtra(command, extras, module) from error


class ApiClient:
    """A thin REST client; every transport failure becomes ControllerUnreachable."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=3))

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer. Raises ControllerUnreachable, ApiError."""
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
        """GET with the parameters that are not None. Raises ControllerUnreachable, ApiError."""
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client(args: argparse.Namespace) -> ApiClient:
    """A client for the controller named by `--api`; close it (or use it in a `with`)."""
    return ApiClient(args.api)


def api_get(args: argparse.Namespace, path: str, **params: Any) -> Any:
    """One GET against the controller named by `--api`. Raises ControllerUnreachable, ApiError."""
    with client(args) as api:
        return api.get(path, **params)


def api_request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """One request against the controller named by `--api`. Raises ControllerUnreachable,
    ApiError."""
    with client(args) as api:
        return api.request(method, path, **kwargs)


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """--api and --output, accepted after a subcommand as well as before it."""
    parser.add_argument("--api", default=argparse.SUPPRESS, help="controller URL")
    parser.add_argument(
        "--output", choices=("table", "json"), default=argparse.SUPPRESS, help="output format"
    )


def ago(ts: float | None) -> str:
    """A unix time as how long ago it was (`5m ago`), or `-`."""
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def local_time(ts: float | None) -> str:
    """A unix time as local date and time, or `-`."""
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
