"""A simulated fleet: N devices on one loop thread, started, observed and stopped together."""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from controller.demo.sim.device import SharedVerifier, SimBundle, SimDevice, TlsFiles
from controller.demo.sim.knobs import SimCounters, SimKnobs
from controller.demo.sim.loop import Loop
from ota.digest import file_digest
from ota.trust import TrustStore
from protocol.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_BATCH = 50
"""Devices connected per turn of the loop, so the loop keeps serving those already up."""


class SimFleet:
    """`devices` simulated agents named `<id_prefix>-0000`...; `installed` is a bundle file
    every device starts on (verified with the real verifier first)."""

    def __init__(
        self,
        devices: int,
        *,
        port: int,
        trust: TrustStore,
        knobs: SimKnobs | None = None,
        host: str = "127.0.0.1",
        prefix: str = DEFAULT_PREFIX,
        id_prefix: str = "sim",
        workdir: Path | None = None,
        installed: Path | None = None,
        keepalive: int = 30,
        tls: Callable[[str], TlsFiles] | None = None,
    ) -> None:
        self.knobs = knobs or SimKnobs()
        self.tls = tls
        self.host, self.port, self.keepalive = host, port, keepalive
        self.topics = Topics(prefix)
        self.counters = SimCounters()
        self.verifier = SharedVerifier(trust, self.counters)
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-sim-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.loop = Loop()
        self.started = time.monotonic()
        self.installed = self._preinstall(installed) if installed is not None else None
        rng = random.Random(self.knobs.seed)
        slow = set(rng.sample(range(devices), round(devices * self.knobs.slow_fraction)))
        self.devices = [
            SimDevice(self, f"{id_prefix}-{i:04d}", slow=i in slow) for i in range(devices)
        ]
        self.by_id = {d.id: d for d in self.devices}

    def _preinstall(self, path: Path) -> SimBundle:
        digest, _ = file_digest(path)
        manifest = self.verifier.verify(path, digest)
        behaviour = self.knobs.behaviour(manifest.name, manifest.version, digest)
        return SimBundle(manifest.name, manifest.version, digest, behaviour)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> SimFleet:
        """Connect every device and wait until all are online; raises TimeoutError."""
        self.loop.start()
        self.loop.call_soon_threadsafe(lambda: self._connect_from(0))
        self.wait(lambda: self.online() == len(self.devices), timeout, "every device online")
        self.loop.run_sync(self._start_health)
        log.info("event=sim_started devices=%d", len(self.devices))
        return self

    def _connect_from(self, start: int) -> None:
        for device in self.devices[start : start + CONNECT_BATCH]:
            device.connect()
        if start + CONNECT_BATCH < len(self.devices):
            self.loop.call_later(0.0, lambda: self._connect_from(start + CONNECT_BATCH))

    def _start_health(self) -> None:
        interval = self.knobs.health_interval_s
        rng = random.Random(self.knobs.seed + 1)
        for device in self.devices:

            def tick(device: SimDevice = device) -> None:
                if device.stopping:
                    return
                device.publish_health()
                self.loop.call_later(interval, tick)

            self.loop.call_later(rng.random() * interval, tick)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every device cleanly (offline state, DISCONNECT), then the loop."""
        if self.loop.running:
            try:
                self.loop.run_sync(self._stop_devices, timeout)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self.connected() > 0:
                    time.sleep(0.05)
            except TimeoutError:
                log.warning("event=sim_stop_slow")
        self.loop.stop()
        for device in self.devices:
            sock = device.client.socket()
            if sock is not None:
                sock.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_devices(self) -> None:
        for device in self.devices:
            device.stop()

    def __enter__(self) -> SimFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- looking at it (any thread) --------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float = 60.0) -> T:
        """Run `fn` on the loop thread (where device state lives) and return its result."""
        return self.loop.run_sync(fn, timeout)  # type: ignore[return-value]

    def online(self) -> int:
        return sum(1 for d in self.devices if d.online)

    def connected(self) -> int:
        return sum(1 for d in self.devices if d.client.socket() is not None)

    def running_on(self) -> Counter[str]:
        """How many devices run each bundle digest (on probation or committed)."""
        return self.call(
            lambda: Counter(d.current.digest for d in self.devices if d.current is not None)
        )

    def settled_on(self, digest: str) -> int:
        """Devices that run `digest` and have no probation or download in progress."""
        return self.call(
            lambda: sum(
                1
                for d in self.devices
                if d.current is not None
                and d.current.digest == digest
                and d.trial is None
                and d.transfer is None
            )
        )

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated fleet: no {what} within {timeout:.0f} s")
            time.sleep(0.05)
