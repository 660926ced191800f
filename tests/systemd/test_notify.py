"""Readiness and watchdog through a real notify socket, as systemd's Type=notify sees them.

Each test binds the AF_UNIX datagram socket systemd would, starts the real agent or controller
process with NOTIFY_SOCKET and WATCHDOG_USEC set, and reads what arrives: READY=1, WATCHDOG=1
pings no further apart than the watchdog period, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controller.demo.processes import spawn_agent, stop_agent, write_agent_config
from controller.demo.sample_video import Placement, write_sample_video
from controller.server import sd_notify, watchdog_interval
from ota.trust_file import save_trust_store

# WatchdogSec=2: short enough for a quick test, long enough for a loaded CI machine
WATCHDOG_USEC = 2_000_000


@dataclass(frozen=True)
class Datagram:
    at: float
    fields: dict[str, str]


class NotifySocket:
    """The receiving end of sd_notify: a bound AF_UNIX datagram socket in a short path."""

    def __init__(self) -> None:
        # sun_path holds 108 bytes; pytest's tmp_path can be longer than that
        self._dir = tempfile.TemporaryDirectory(prefix="ef-notify-")
        self.path = Path(self._dir.name) / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))

    def env(self, watchdog_usec: int = WATCHDOG_USEC) -> dict[str, str]:
        environment = {**os.environ, "NOTIFY_SOCKET": str(self.path)}
        environment["WATCHDOG_USEC"] = str(watchdog_usec)
        environment.pop("WATCHDOG_PID", None)
        return environment

    def receive(self, timeout: float) -> Datagram | None:
        """The next datagram, or None when none came within `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        return Datagram(time.monotonic(), fields)

    def wait_for(self, key: str, timeout: float, process: subprocess.Popen[bytes]) -> Datagram:
        """Read until a datagram carries `key`; fails if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.receive(min(0.5, deadline - time.monotonic()))
            if got is not None and key in got.fields:
                return got
            assert process.poll() is None, f"process exited with {process.returncode}"
        raise AssertionError(f"no {key} within {timeout}s")

    def pings(self, seconds: float) -> list[Datagram]:
        """Every WATCHDOG=1 received during the next `seconds`."""
        found: list[Datagram] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is not None and got.fields.get("WATCHDOG") == "1":
                found.append(got)
        return found

    def drain(self) -> None:
        while self.receive(0.001) is not None:
            pass

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    try:
        yield listener
    finally:
        listener.close()


def assert_pings_in_time(pings: list[Datagram], since: float, until: float) -> None:
    """Pings kept coming from `since` to `until`, none further apart than the watchdog period."""
    period = WATCHDOG_USEC / 1e6
    assert len(pings) >= int((until - since) / period), f"{len(pings)} pings"
    times = [since, *(p.at for p in pings), until]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < period, f"a watchdog gap of {max(gaps):.2f}s exceeds {period}s"


def wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Until every thread of `pid` is stopped (state T): SIGSTOP takes effect asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in Path(f"/proc/{pid}/task").iterdir()
        }
        if states <= {"T", "t"}:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def test_agent_with_a_camera_says_ready_then_pings_the_watchdog_until_stopped(
    tmp_path, mosquitto, notify_socket
):
    video = write_sample_video(
        tmp_path / "scene.avi",
        fps=10,
        seconds_per_image=1.0,
        scenes=[("astronaut", Placement("astronaut"))],
    )
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    config = write_agent_config(
        agent_dir,
        {
            "device_id": "notify-cam-01",
            "data_dir": str(agent_dir),
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
            "cameras": [{"id": "cam0", "source": str(video.path), "loop": True}],
        },
    )
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, log, notify_socket.env())
    try:
        ready = notify_socket.wait_for("READY", 60, agent)
        assert ready.fields["READY"] == "1"
        assert "notify-cam-01" in ready.fields.get("STATUS", ""), ready.fields
        # the frame loop pings: never a gap the watchdog would kill the service for
        assert_pings_in_time(notify_socket.pings(4.0), ready.at, time.monotonic())

        # a frozen process stops pinging (systemd would restart it) and pings again once thawed
        agent.send_signal(signal.SIGSTOP)
        try:
            wait_stopped(agent.pid)
            notify_socket.drain()
            assert notify_socket.pings(WATCHDOG_USEC / 1e6 + 0.5) == []
        finally:
            agent.send_signal(signal.SIGCONT)
        assert notify_socket.pings(2.5), "no ping after the process was thawed"

        agent.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING", 20, agent)
        assert agent.wait(timeout=20) == 0
    except BaseException:
        print(log_tail(log))
        raise
    finally:
        stop_agent(agent)


def test_agent_without_cameras_pings_from_its_control_loop(tmp_path, mosquitto, notify_socket):
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    config = write_agent_config(
        agent_dir,
        {
            "device_id": "notify-idle-01",
            "data_dir": str(agent_dir),
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
        },
    )
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, log, notify_socket.env())
    try:
        ready = notify_socket.wait_for("READY", 60, agent)
        assert_pings_in_time(notify_socket.pings(4.0), ready.at, time.monotonic())
    except BaseException:
        print(log_tail(log))
        raise
    finally:
        stop_agent(agent)


# MemoryDenyWriteExecute=yes as the kernel applies it (PR_SET_MDWE, Linux 6.3+, kept across
# execve): no mapping may be writable and executable, none may become executable
WITHOUT_WRITE_EXECUTE = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE failed ({os.strerror(ctypes.get_errno())}): Linux 6.3 or later needed")
os.execv(sys.argv[1], sys.argv[1:])
"""


def controller_command() -> list[str]:
    """`edgefleet` as the unit starts it, with writable+executable memory refused."""
    script = Path(sys.executable).with_name("edgefleet")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "controller.cli.main"]
    return [sys.executable, "-c", WITHOUT_WRITE_EXECUTE, *command]


def test_controller_says_ready_once_its_api_answers_then_pings_the_watchdog(
    tmp_path, mosquitto, trust, command_key_file, notify_socket
):
    trust_path = tmp_path / "trust.json"
    save_trust_store(trust, trust_path)
    settings = tmp_path / "controller.json"
    settings.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "controller"),
                "mqtt": {"port": mosquitto.port, "client_id": "notify-controller"},
                "http": {"port": 0},
                "trust_path": str(trust_path),
                "command_key_path": str(command_key_file),
            }
        )
    )
    log = tmp_path / "controller.log"
    with log.open("ab") as out:
        controller = subprocess.Popen(
            [*controller_command(), "controller", "run", "--config", str(settings)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=notify_socket.env(),
        )
    try:
        ready = notify_socket.wait_for("READY", 60, controller)
        status = ready.fields.get("STATUS", "")
        assert status.startswith("serving http://127.0.0.1:"), ready.fields
        # READY=1 means the API answers now, not later
        assert httpx.get(status.removeprefix("serving ") + "/healthz").status_code == 200
        assert_pings_in_time(notify_socket.pings(4.0), ready.at, time.monotonic())

        controller.send_signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING", 30, controller)
        assert controller.wait(timeout=30) == 0
    except BaseException:
        print(log_tail(log))
        raise
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait(timeout=10)


def test_controller_notify_is_silent_without_a_socket_and_honours_watchdog_pid():
    assert sd_notify("READY=1", env={}) is False
    assert watchdog_interval({}) == 0.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    # systemd names the process the watchdog is meant for; another process never pings
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 15.0
    assert watchdog_interval({**mine, "WATCHDOG_PID": str(os.getpid() + 1)}) == 0.0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) == 0.0


def test_controller_notify_reaches_an_abstract_socket():
    name = f"ef-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert sd_notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(64) == b"WATCHDOG=1"
