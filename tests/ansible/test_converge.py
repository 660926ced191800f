"""The Ansible playbooks for real, on this machine (connection local, everything under a temporary
prefix): converge the controller, the broker and a device; a second run changes nothing; then the
installed broker runs with its installed configuration and the agent from the installed virtual
environment comes online on it with its certificate.

The controller role runs fully except starting services (systemd is not PID 1 here): its venv,
settings, PostgreSQL role and database (fresh names, dropped afterwards), CAs and broker files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from agent.link.identity import make_csr
from controller.auth.ca import CertificateAuthority
from controller.demo.broker import free_port, wait_for_port
from protocol.codec import decode_agent_message
from protocol.events import DeviceStatus
from protocol.messages import State
from protocol.topics import Topics
from tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PACKAGES = ("protocol", "ota", "device_profiles", "agent", "controller")
DEVICE = "ansible-cam-01"
# quotes, URL and YAML specials: the roles must quote it everywhere and never log it
DB_PASSWORD = "pa'ss \"wo:rd@/%#\\ x"
RECAP = re.compile(
    r"^localhost\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)

if not PLAYBOOK.exists() or shutil.which("mosquitto") is None:  # pragma: no cover
    pytest.skip("needs ansible-core in this venv and mosquitto", allow_module_level=True)


def _psql_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


# what the wheel is built from: a snapshot, so that edits made to the checkout while the test
# runs cannot make the second converge install a different wheel
def _snapshot(dest: Path) -> Path:
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "vendor")
    for name in ("systemd", *PACKAGES):
        shutil.copytree(REPO / name, dest / name, ignore=skip)
    for path in REPO.iterdir():  # pyproject.toml, README.md, constraints.txt, ...
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, dest / path.name)
    return dest


@pytest.fixture
def site(tmp_path) -> Iterator[dict]:
    """An inventory that installs everything under tmp_path, on free ports, with fresh
    PostgreSQL names; the role and database are dropped afterwards."""
    root = tmp_path / "root"
    source = _snapshot(tmp_path / "source")
    keys = tmp_path / "keys"
    subprocess.run(
        [Path(sys.executable).parent / "edgefleet", "keys", "init", "--dir", keys],
        check=True,
        capture_output=True,
    )
    suffix = uuid.uuid4().hex[:10]
    db_name, db_user = f"ef_ansible_{suffix}", f"ef_ansible_{suffix}"
    ports = {"device": free_port(), "controller": free_port(), "http": free_port()}
    device_dir = tmp_path / "device-identity"
    admin = urlsplit(PG_ADMIN_URL)
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    variables = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "edgefleet_become": False,
        "edgefleet_root": str(root),
        "edgefleet_manage_packages": False,
        "edgefleet_manage_users": False,
        "edgefleet_manage_services": False,
        "edgefleet_user": user,
        "edgefleet_broker_user": user,
        "edgefleet_trust_src": str(keys / "trust.json"),
        "edgefleet_broker_hostnames": ["localhost"],
        "edgefleet_fleet_ca_src": str(tmp_path / "fleet-ca.pem"),
        "edgefleet_broker_device_host": "127.0.0.1",
        "edgefleet_broker_device_port": ports["device"],
        "edgefleet_broker_controller_port": ports["controller"],
        "edgefleet_broker_pid_file": str(root / "run/mosquitto/mosquitto.pid"),
        "edgefleet_source_dir": str(source),
        "edgefleet_wheel_dist_dir": str(tmp_path / "dist"),
        "edgefleet_agent_unit_src": str(source / "systemd/edgefleet-agent.service"),
        "edgefleet_controller_unit_src": str(source / "systemd/edgefleet-controller.service"),
        "edgefleet_controller_venv": str(root / "opt/edgefleet-controller"),
        "edgefleet_controller_python": sys.executable,
        "edgefleet_controller_command_key_src": str(keys / "command" / "command-1.pem"),
        "edgefleet_controller_db_name": db_name,
        "edgefleet_controller_db_user": db_user,
        "edgefleet_controller_db_password": DB_PASSWORD,
        "edgefleet_controller_db_admin_os_user": "",
        "edgefleet_controller_db_admin_env": {  # the tests' admin URL, as libpq settings
            "PGHOST": admin.hostname or "127.0.0.1",
            "PGPORT": str(admin.port or 5432),
            "PGUSER": admin.username or "postgres",
            **({"PGPASSWORD": admin.password} if admin.password else {}),
        },
        "edgefleet_controller_db_host": admin.hostname or "127.0.0.1",
        "edgefleet_controller_db_port": admin.port or 5432,
        "edgefleet_controller_http_host": "127.0.0.1",
        "edgefleet_controller_http_port": ports["http"],
        "edgefleet_agent_kind": "generic",
        "edgefleet_agent_extras": ["agent"],  # the runtime extras only cost install time here
        "edgefleet_agent_venv": str(root / "opt/edgefleet-agent"),
        "edgefleet_agent_python": sys.executable,
        "edgefleet_agent_device_id": DEVICE,
        "edgefleet_agent_broker_host": "localhost",
        "edgefleet_agent_cameras": [],
        "edgefleet_agent_key_src": str(device_dir / "device.key"),
        "edgefleet_agent_cert_src": str(device_dir / "device.pem"),
        "edgefleet_agent_ca_src": str(root / "var/lib/mosquitto/edgefleet/fleet-ca.pem"),
    }
    inventory = tmp_path / "inventory.yml"
    hosts = {"hosts": {"localhost": None}}
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": variables,
                    "children": {
                        "edgefleet_controller": hosts,
                        "edgefleet_broker": hosts,
                        "edgefleet_devices": hosts,
                    },
                }
            }
        )
    )
    try:
        yield {
            "tmp": tmp_path,
            "source": source,
            "root": root,
            "inventory": inventory,
            "ports": ports,
            "device_dir": device_dir,
            "db": (db_name, db_user),
        }
    finally:
        _psql_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        _psql_admin(f'DROP ROLE IF EXISTS "{db_user}"')


def _play(site: dict, *playbooks: str, verbose: bool = False) -> tuple[dict[str, int], str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(site["tmp"] / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(site["tmp"] / "ansible-tmp"),
        "ANSIBLE_REMOTE_TMP": str(site["tmp"] / "ansible-remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_GATHERING": "explicit",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    argv = [
        str(PLAYBOOK),
        "-c",
        "local",
        "-i",
        str(site["inventory"]),
        *(["-v"] if verbose else []),
        *(str(ANSIBLE_DIR / "playbooks" / p) for p in playbooks),
    ]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True)
    output = done.stdout + done.stderr
    print(f"{' '.join(playbooks)}: {time.monotonic() - started:.1f}s")
    assert done.returncode == 0, output[-6000:]
    recaps = [m.groupdict() for m in RECAP.finditer(output)]
    assert recaps, output[-3000:]
    total = {k: sum(int(r[k]) for r in recaps) for k in recaps[0]}
    return total, output


def _changed_tasks(output: str) -> list[str]:
    """The names of the tasks that reported a change (from the default callback's output)."""
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(task)
    return changed


def _issue_device_certificate(site: dict) -> None:
    """What enrollment would do, done ahead: the device's key, a CSR, the fleet CA's signature."""
    pki = site["root"] / "var/lib/edgefleet/controller/pki"
    fleet = CertificateAuthority.load_or_create(pki / "fleet")
    key = ec.generate_private_key(ec.SECP256R1())
    issued = fleet.issue_client(make_csr(key, DEVICE), DEVICE, datetime.now(timezone.utc))
    site["device_dir"].mkdir()
    (site["device_dir"] / "device.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (site["device_dir"] / "device.pem").write_bytes(issued.pem)


class StateWatcher:
    """Reads the device's retained state on the controller's TLS listener, as the controller."""

    def __init__(self, site: dict) -> None:
        broker = site["root"] / "var/lib/mosquitto/edgefleet"
        pki = site["root"] / "var/lib/edgefleet/controller/pki/controller"
        self.topics = Topics()
        self.states: list[State] = []
        self.cond = threading.Condition()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{os.getpid()}")
        client.tls_set(
            ca_certs=str(broker / "fleet-ca.pem"),
            certfile=str(pki / "controller.pem"),
            keyfile=str(pki / "controller.key"),
        )
        client.on_connect = lambda c, *_: c.subscribe(self.topics.state(DEVICE), 1)
        client.on_message = self._on_message
        client.connect("localhost", site["ports"]["controller"])
        client.loop_start()
        self.client = client

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        _, message = decode_agent_message(self.topics, msg.topic, msg.payload)
        with self.cond:
            if isinstance(message, State):
                self.states.append(message)
            self.cond.notify_all()

    def wait_online(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(s.status == DeviceStatus.ONLINE for s in self.states), timeout
            )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _healthy(site: dict, controller: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the controller's https /healthz says 200 (database and MQTT) within `timeout`."""
    import httpx

    ca = ssl.create_default_context(
        cafile=str(site["root"] / "var/lib/mosquitto/edgefleet/fleet-ca.pem")
    )
    url = f"https://localhost:{site['ports']['http']}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and controller.poll() is None:
        try:
            if httpx.get(url, verify=ca, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace")


def test_converge_twice_then_the_installed_agent_comes_online(site):
    root = site["root"]
    started = time.monotonic()

    # 1. the controller host: venv, PostgreSQL, settings, CAs, broker files; then the broker
    first, output = _play(site, "controller.yml", "broker.yml", verbose=True)
    assert first["failed"] == 0 and first["changed"] > 0
    assert DB_PASSWORD not in output and "wo:rd" not in output, "a secret reached the log"

    # the device's certificate from the fleet CA the controller role made
    _issue_device_certificate(site)
    agents, output = _play(site, "agents.yml", verbose=True)
    assert agents["failed"] == 0 and agents["changed"] > 0

    # 2. the trust store moved forward on the device (as `trust push` would) stays as it is
    trust = root / "var/lib/edgefleet/agent/trust.json"
    pushed = trust.read_bytes().replace(b"{", b"{ ", 1)
    trust.write_bytes(pushed)

    again, output = _play(site, "site.yml")
    assert again["failed"] == 0, output[-4000:]
    assert again["changed"] == 0, _changed_tasks(output)
    assert trust.read_bytes() == pushed
    print(f"both converges: {time.monotonic() - started:.1f}s")

    # what was installed
    settings = json.loads((root / "etc/edgefleet/controller.json").read_text())
    from sqlalchemy.engine import make_url

    url = make_url(settings["database_url"])
    assert (url.database, url.username, url.password) == (*site["db"], DB_PASSWORD)
    assert ((root / "etc/edgefleet/controller.json").stat().st_mode & 0o777) == 0o640
    assert ((root / "var/lib/edgefleet/controller/command.pem").stat().st_mode & 0o777) == 0o600
    assert (root / "etc/systemd/system/edgefleet-agent.service").read_bytes() == (
        site["source"] / "systemd/edgefleet-agent.service"
    ).read_bytes()
    dropin = (root / "etc/systemd/system/edgefleet-agent.service.d/50-ansible.conf").read_text()
    assert f"{root}/opt/edgefleet-agent/bin/edgefleet-agent run --config" in dropin
    # the fleet CA fetched to the control node, then given to the device for the https API
    fleet_ca = (root / "var/lib/mosquitto/edgefleet/fleet-ca.pem").read_bytes()
    assert (site["tmp"] / "fleet-ca.pem").read_bytes() == fleet_ca
    assert (root / "etc/edgefleet/controller-ca.pem").read_bytes() == fleet_ca
    agent_yaml = yaml.safe_load((root / "etc/edgefleet/agent.yaml").read_text())
    assert agent_yaml["device_id"] == DEVICE
    import psycopg

    with psycopg.connect(PG_ADMIN_URL) as conn:
        row = conn.execute(
            "SELECT rolpassword IS NOT NULL, (SELECT pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname = %s) FROM pg_authid WHERE rolname = %s",
            (site["db"][0], site["db"][1]),
        ).fetchone()
    assert row == (True, site["db"][1])
    # the wheel, not PyPI: the installed package is the checkout's
    installed = subprocess.run(
        [root / "opt/edgefleet-agent/bin/python", "-c", "import agent, sys; print(agent.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=site["tmp"],
    ).stdout
    assert str(root / "opt/edgefleet-agent") in installed

    # 3. the installed broker, with the installed configuration
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(root / "etc/mosquitto/mosquitto.conf")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    agent: subprocess.Popen[bytes] | None = None
    controller: subprocess.Popen[bytes] | None = None
    watcher: StateWatcher | None = None
    try:
        assert wait_for_port("127.0.0.1", site["ports"]["device"], 10), _stop(broker)
        assert wait_for_port("127.0.0.1", site["ports"]["controller"], 10), _stop(broker)
        watcher = StateWatcher(site)
        agent = subprocess.Popen(
            [
                str(root / "opt/edgefleet-agent/bin/edgefleet-agent"),
                "run",
                "--config",
                str(root / "etc/edgefleet/agent.yaml"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
            cwd=site["tmp"],
        )
        online = watcher.wait_online(60)
        assert online, _stop(agent)[-4000:] + "\n--- broker:\n" + _stop(broker)[-2000:]

        # 4. the installed controller with its settings: PostgreSQL (migrated at start), its
        # broker identity on the installed broker, https with the fleet CA's certificate
        controller = subprocess.Popen(
            [
                str(root / "opt/edgefleet-controller/bin/edgefleet"),
                "controller",
                "run",
                "--config",
                str(root / "etc/edgefleet/controller.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
            cwd=site["tmp"],
        )
        assert _healthy(site, controller, 90), _stop(controller)[-4000:]
    finally:
        if watcher is not None:
            watcher.close()
        for proc in (controller, agent):
            if proc is not None and proc.poll() is None:
                _stop(proc)
        if broker.poll() is None:
            _stop(broker)
    print(f"whole test: {time.monotonic() - started:.1f}s")
