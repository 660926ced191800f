"""A local MQTT broker for the embedded default and for tests: mosquitto if installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.demo.waiting import WaitTimedOut, wait_until

log = logging.getLogger(__name__)


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
    ) -> None:
        found = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = found
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
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
            if wait_for_port(self.host, self.port, 0.2):
                log.info("event=broker_started kind=mosquitto port=%d", self.port)
                return self
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

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
