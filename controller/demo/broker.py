"""A local MQTT broker for the embedded default and for tests: mosquitto if installed."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.auth.acl import BrokerFiles, BrokerPolicy, mosquitto_config, write_broker_files
from controller.auth.ca import CertificateAuthority, write_identity
from controller.demo.waiting import WaitTimedOut, wait_until
from controller.settings import BROKER_DELIVERY_LIMITS

log = logging.getLogger(__name__)


DELIVERY_LIMITS = BROKER_DELIVERY_LIMITS
"""The broker's per-client bounds (`controller.settings.BROKER_DELIVERY_LIMITS`)."""


class BrokerError(RuntimeError):
    """The broker could not be started or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Whether `host:port` accepts a TCP connection within `timeout` seconds."""

    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        return False

    try:
        return wait_until(f"{host}:{port} to listen", accepts, timeout, interval=0.05)
    except WaitTimedOut:
        return False


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_user() -> list[str]:
    # Started as root, mosquitto would switch to the `mosquitto` user, which cannot read the
    # keys and CRL in our private folders: a broker of our own runs as whoever started it.
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return [f"user {pwd.getpwuid(0).pw_name}"]
    return []


class MosquittoBroker:
    """A mosquitto process on its own port with its own config, persistence and log.

    It can be stopped and started again on the same port with its persisted state, and
    `extra_config` carries lines such as `password_file` and `acl_file` for ACL tests.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        extra_config: str = "",
        allow_anonymous: bool = True,
        binary: str | None = None,
        security_config: str | None = None,
    ) -> None:
        found = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        if security_config is None and not _loopback(host):
            # beyond loopback only the generated TLS configuration (controller.auth.acl)
            raise BrokerError(f"tls_required: a plain broker listens on loopback only, not {host}")
        self.binary = found
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        # the generated TLS listeners and ACL (controller.auth.acl) instead of a plain listener
        self.security_config = security_config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        if self.security_config is not None:
            lines = [self.security_config]
        else:
            lines = [
                f"listener {self.port} {self.host}",
                f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            ]
        # as whoever started it: as the `mosquitto` user it could write neither its
        # persistence nor its log in our private folder, and sessions would not survive a restart
        lines += _same_user()
        lines += [
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            *DELIVERY_LIMITS,
            self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start (or restart) the broker and wait until it accepts connections."""
        if self.running:
            return self
        self.write_config()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {err.strip()}")
            if all(wait_for_port(host, port, 0.2) for host, port in self._listeners()):
                log.info("event=broker_started kind=mosquitto port=%d", self.port)
                return self
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def _listeners(self) -> list[tuple[str, int]]:
        """Every listener in the config: mosquitto opens them one after another, and a client
        of the second (the controller's TLS listener) is refused while only the first listens."""
        found = []
        for line in self.config_path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "listener" and words[1].isdigit():
                bound = words[2] if len(words) > 2 else ""
                host = self.host if bound in ("", "0.0.0.0", "::") else bound  # noqa: S104
                found.append((host, int(words[1])))
        return found or [(self.host, self.port)]

    def stop(self) -> None:
        """Stop the broker; its persisted state stays for the next start."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """Kill the broker without letting it save (a crash)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None

    def reload(self) -> None:
        """Rewrite the config and ask mosquitto to re-read password and ACL files (SIGHUP)."""
        self.write_config()
        if self._proc is not None:
            self._proc.send_signal(1)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class InProcessBroker:
    """An amqtt broker on a background event loop, for machines without mosquitto."""

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1") -> None:
        if not _loopback(host):
            raise BrokerError(
                f"tls_required: the in-process broker is plain: loopback only, not {host}"
            )
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    def start(self, timeout: float = 10.0) -> InProcessBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerError("neither mosquitto nor amqtt is available") from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            self._broker = Broker(config, loop=loop)
            loop.run_until_complete(self._broker.start())
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or not wait_for_port(self.host, self.port, timeout):
            raise BrokerError(f"in-process broker did not listen on {self.host}:{self.port}")
        log.info("event=broker_started kind=amqtt port=%d", self.port)
        return self

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(timeout=5)

    stop = close


def start_local_broker(port: int | None = None) -> MosquittoBroker | InProcessBroker:
    """The system's mosquitto when installed, else an in-process broker."""
    try:
        return MosquittoBroker(port).start()
    except BrokerError as exc:
        log.warning("event=mosquitto_unavailable reason=%r fallback=amqtt", str(exc))
        return InProcessBroker(port).start()


@dataclass(frozen=True)
class SecureEndpoint:
    """How to reach a broker started with the generated TLS + ACL configuration."""

    device_port: int
    controller_port: int
    fleet_ca: Path  # devices and the controller check the broker's certificate against it
    controller_cert: Path
    controller_key: Path
    files: BrokerFiles
    pid_file: Path


def start_secure_broker(
    pki_dir: Path, workdir: Path, prefix: str
) -> tuple[MosquittoBroker, SecureEndpoint]:
    """A mosquitto on loopback with the production configuration (controller.auth.acl).

    The fleet CA in `pki_dir/fleet` is the one the controller enrolls devices with; the
    controller's own identity comes from `pki_dir/service`. Raises BrokerError when mosquitto
    or its dynamic-security plugin is missing.
    """
    policy = BrokerPolicy(
        prefix=prefix, device_port=free_port(), device_host="127.0.0.1", controller_port=free_port()
    )
    if not Path(policy.dynsec_plugin).exists():
        raise BrokerError(
            f"mosquitto's dynamic-security plugin is missing ({policy.dynsec_plugin})"
        )
    now = datetime.now(timezone.utc)
    fleet = CertificateAuthority.load_or_create(pki_dir / "fleet")
    service = CertificateAuthority.load_or_create(pki_dir / "service")
    files = BrokerFiles(workdir / "broker-files")
    write_broker_files(files, policy, fleet, service, ["localhost", "127.0.0.1"], [], now)
    key, cert = write_identity(
        pki_dir / "controller",
        "controller",
        service.issue_identity(policy.controller_identity, now),
    )
    pid_file = workdir / "mosquitto.pid"
    broker = MosquittoBroker(
        policy.device_port,
        workdir=workdir / "mosquitto",
        security_config=mosquitto_config(policy, files),
        extra_config=f"pid_file {pid_file}",
    )
    broker.start()
    return broker, SecureEndpoint(
        policy.device_port, policy.controller_port, files.fleet_ca, cert, key, files, pid_file
    )
