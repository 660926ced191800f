"""What every `edgefleet` command shares: the REST client and its errors, exit codes, the
`--api`/`--output` options, output as a table or JSON, and the error for a missing extra.

Only the CLI's own dependencies (httpx, rich) are imported here, so listing devices works on a
workstation without the controller's server packages.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_API = "http://127.0.0.1:8080"
EXIT_OK, EXIT_API_ERROR, EXIT_UNREACHABLE = 0, 1, 2
EXIT_NOT_AUTHENTICATED = 4
TOKEN_ENV = "EDGEFLEET_TOKEN"  # noqa: S105 - a variable name, not a secret
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


class NotAuthenticated(ApiError):
    """The controller wants credentials (HTTP 401): none were found, or they are not valid."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.args = (f"{self.args[0]} (run `edgefleet login`, or set {TOKEN_ENV} to an API token)",)


def config_dir() -> Path:
    """The user's edgefleet config folder ($XDG_CONFIG_HOME/edgefleet or ~/.config/edgefleet)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def _read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def stored_token(api: str, path: Path | None = None) -> str | None:
    """The token `edgefleet login` stored for the controller at `api`, if any."""
    return _read_credentials(path or credentials_path()).get(api.rstrip("/"))


def store_token(api: str, token: str, path: Path | None = None) -> Path:
    """Keep `token` for `api` in the credentials file, readable by this user only (0600)."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = _read_credentials(path)
    data[api.rstrip("/")] = token
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
    os.chmod(partial, 0o600)
    os.replace(partial, path)
    return path


def resolve_token(api: str) -> str | None:
    """The API token to send: $EDGEFLEET_TOKEN, else the one stored by `edgefleet login`."""
    return os.environ.get(TOKEN_ENV) or stored_token(api)


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

    def __init__(self, base_url: str, timeout: float = 10.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # a controller whose API certificate comes from the fleet's own CA: EDGEFLEET_CA_FILE
        ca_file = os.environ.get("EDGEFLEET_CA_FILE")
        verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=3),
            headers=headers,
            verify=verify,
        )

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
            if response.status_code == 401:
                raise NotAuthenticated(response.status_code, detail)
            raise ApiError(response.status_code, detail)
        if response.status_code == 204:
            return None
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
    return ApiClient(args.api, token=resolve_token(args.api))


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
