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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_API = "http://127.0.0.1:8080"
TOKEN_ENV = "EDGEFLEET_TOKEN"  # noqa: S105 - a variable name, not a secret
API_ENV = "EDGEFLEET_API"

# The exit codes of every `edgefleet` command (README, "The command line"): commands return
# these, and `exit_code` maps the errors they raise to them.
EXIT_OK = 0
# the controller answered and refused (HTTP 4xx other than 401, 403 included), or what was
# asked for failed (a deployment that failed, a rollout that halted, a bundle that is refused)
EXIT_REFUSED = 1
# a bad command line: argparse's own errors, a flag's value that does not parse, a file
# argument that cannot be read, or a command whose extra is not installed here
EXIT_USAGE = 2
# no usable answer from the controller: refused connection, timeout, TLS failure, HTTP 5xx
EXIT_UNREACHABLE = 3
# the controller wants credentials (HTTP 401): none found, expired, revoked or disabled
EXIT_NOT_AUTHENTICATED = 4
EXIT_INTERRUPTED = 130
EXIT_API_ERROR = EXIT_REFUSED
# a command whose optional packages are missing cannot be used here: a usage error, like the
# console script's launcher says
EXIT_NOT_INSTALLED = EXIT_USAGE

Column = tuple[str, Callable[[dict[str, Any]], str]]
"""A table column: its header and how to render a row's cell."""

_OUR_PACKAGES = frozenset({"protocol", "ota", "device_profiles", "agent", "controller"})


class UsageError(Exception):
    """A command line that cannot be run as given (exit code 2)."""


class Refused(Exception):
    """What was asked for was refused or failed, found out without an HTTP error (exit 1)."""


class ControllerUnreachable(Exception):
    """No usable answer from the controller (refused, timed out, bad address, HTTP 5xx)."""


class ApiError(Exception):
    """The controller answered with an error status."""

    def __init__(self, status: int, detail: Any) -> None:
        self.reason: str | None = None
        if isinstance(detail, dict) and "reason" in detail:
            self.reason = str(detail["reason"])
            detail = f"{detail['reason']}: {_plain(detail.get('detail', ''))}"
        elif isinstance(detail, list):  # FastAPI's validation errors: one line each
            detail = "invalid request: " + _plain(detail)
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


def _plain(detail: Any) -> str:
    """A validation error list as `field: message; ...`, anything else as text."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class NotAuthenticated(ApiError):
    """The controller wants credentials (HTTP 401): none were found, or they are not valid."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.args = (f"{self.args[0]} (run `edgefleet login`, or set {TOKEN_ENV} to an API token)",)


class Forbidden(ApiError):
    """The caller is signed in but its role does not allow this (HTTP 403)."""


def exit_code(exc: BaseException) -> int | None:
    """The documented exit code for an error a command raised, or None for a bug (raise it)."""
    if isinstance(exc, NotAuthenticated):
        return EXIT_NOT_AUTHENTICATED
    if isinstance(exc, (ApiError, Refused)):
        return EXIT_REFUSED
    if isinstance(exc, ControllerUnreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, (UsageError, MissingExtra)):
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return None


def config_dir() -> Path:
    """The user's edgefleet config folder ($XDG_CONFIG_HOME/edgefleet or ~/.config/edgefleet)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@dataclass
class Credentials:
    """What `edgefleet login` keeps: a token per controller URL, and the controller last
    signed in to (used when neither --api nor $EDGEFLEET_API names one)."""

    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    default_api: str | None = None

    @classmethod
    def read(cls, path: Path | None = None) -> Credentials:
        try:
            data = json.loads((path or credentials_path()).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        tokens: dict[str, dict[str, str]] = {}
        raw = data.get("controllers")
        if raw is None and "default" not in data:  # the first format: {url: token}
            raw = {api: {"token": t} for api, t in data.items() if isinstance(t, str)}
        if isinstance(raw, dict):
            for api, entry in raw.items():
                if isinstance(entry, dict) and isinstance(entry.get("token"), str):
                    tokens[str(api)] = {k: str(v) for k, v in entry.items() if v is not None}
        default = data.get("default")
        return cls(tokens, default if isinstance(default, str) else None)

    def write(self, path: Path | None = None) -> Path:
        """Write the file readable by this user only (0600, in a 0700 folder)."""
        path = path or credentials_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        partial = path.with_suffix(".tmp")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"default": self.default_api, "controllers": self.tokens}, out, indent=2)
        os.replace(partial, path)
        return path


def _key(api: str) -> str:
    return api.rstrip("/")


def stored_token(api: str, path: Path | None = None) -> str | None:
    """The token `edgefleet login` stored for the controller at `api`, if any."""
    return Credentials.read(path).tokens.get(_key(api), {}).get("token")


def store_token(
    api: str, token: str, path: Path | None = None, token_id: str | None = None, user: str = ""
) -> Path:
    """Keep `token` for `api` in the credentials file (0600); `api` becomes the default."""
    creds = Credentials.read(path)
    entry = {"token": token, "user": user}
    if token_id:
        entry["id"] = token_id
    creds.tokens[_key(api)] = entry
    creds.default_api = _key(api)
    return creds.write(path)


def forget_token(api: str, path: Path | None = None) -> dict[str, str] | None:
    """Remove what was kept for `api`; the entry removed, or None when there was none."""
    path = path or credentials_path()
    creds = Credentials.read(path)
    entry = creds.tokens.pop(_key(api), None)
    if entry is None:
        return None
    if creds.default_api == _key(api):
        creds.default_api = next(iter(creds.tokens), None)
    if creds.tokens:
        creds.write(path)
    else:
        path.unlink(missing_ok=True)
    return entry


def default_api() -> str:
    """$EDGEFLEET_API, else the controller last signed in to, else the local one."""
    return os.environ.get(API_ENV) or Credentials.read().default_api or DEFAULT_API


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
        response = self._send(method, path, **kwargs)
        if response.status_code == 204:
            return None
        return response.json()

    def content(self, path: str) -> bytes:
        """The bytes a GET answers (a snapshot's JPEG). Raises ControllerUnreachable,
        ApiError."""
        return self._send("GET", path).content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
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
            except (ValueError, AttributeError):
                detail = response.text
            status = response.status_code
            if status >= 500:
                raise ControllerUnreachable(
                    f"the controller at {self.base_url} could not answer: "
                    f"{ApiError(status, detail)}"
                )
            if status == 401:
                raise NotAuthenticated(status, detail)
            if status == 403:
                raise Forbidden(status, detail)
            raise ApiError(status, detail)
        return response

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


def client(args: argparse.Namespace, timeout: float = 10.0) -> ApiClient:
    """A client for the controller named by `--api`; close it (or use it in a `with`)."""
    return ApiClient(args.api, timeout=timeout, token=resolve_token(args.api))


def resolve_bundle(api: ApiClient, ref: str) -> str:
    """The full digest of the stored bundle `ref` names: `name@version`, a digest, or a unique
    digest prefix (the controller resolves it). Raises ApiError (unknown, ambiguous,
    malformed), ControllerUnreachable."""
    ref = ref.strip()
    if not ref or "/" in ref:
        raise UsageError(f"not a bundle reference: {ref!r} (name@version or a digest prefix)")
    try:
        answer = api.get(f"/api/bundle-refs/{ref}")
    except (NotAuthenticated, Forbidden):
        raise
    except ApiError as exc:
        raise Refused(f"{exc} (stored bundles: `edgefleet bundles`)") from None
    return str(answer["digest"])


def progress_console() -> Console | None:
    """Where progress goes: stderr when it is a terminal, else nowhere, so output piped or
    parsed (`--output json`) carries nothing but the result."""
    return Console(file=sys.stderr) if sys.stderr.isatty() else None


def file_blocks(
    path: Path, advance: Callable[[int], None] | None = None, size: int = 1 << 20
) -> Iterator[bytes]:
    """The file in blocks, calling `advance(len(block))` as each one is handed on."""
    with path.open("rb") as src:
        while block := src.read(size):
            yield block
            if advance is not None:
                advance(len(block))


def api_get(args: argparse.Namespace, path: str, **params: Any) -> Any:
    """One GET against the controller named by `--api`. Raises ControllerUnreachable, ApiError."""
    with client(args) as api:
        return api.get(path, **params)


def api_request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """One request against the controller named by `--api`. Raises ControllerUnreachable,
    ApiError."""
    with client(args) as api:
        return api.request(method, path, **kwargs)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; every error it is known to raise becomes one line on stderr and its
    documented exit code."""
    try:
        return int(func(args))
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code(exc)
        if code is None:
            raise
        if not isinstance(exc, KeyboardInterrupt):
            print(f"edgefleet: {exc}", file=sys.stderr)
        return code


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


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
