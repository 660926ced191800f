"""A live device for the command and trust attack tests: a real agent on a private mosquitto,
an operator client that signs (or forges) commands and collects the acks, and a snapshot of
what the device keeps on disk (slots, trust store, settings overlay, downloads)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon import Agent
from agent.settings import AgentSettings
from controller.demo.broker import MosquittoBroker
from controller.release.recipes import example_spec
from ota.build import build_bundle
from ota.commands import sign_command
from ota.install import SlotStore
from ota.keys import SigningKey
from ota.root import root_signed, sign_root
from ota.trust import TrustStore
from ota.trust_file import save_trust_store
from protocol.codec import decode, encode
from protocol.events import DeviceStatus
from protocol.messages import Ack, CommandEnvelope, State
from protocol.topics import Topics

DEVICE = "cam-sec"
# files that change with every message whatever the command: the outbox and the seen ids
_VOLATILE = ("outbox.sqlite", "commands-seen.sqlite", "engines")


class Operator:
    """A paho client on the device's topics: publishes commands, collects acks and states."""

    def __init__(self, port: int) -> None:
        self.topics = Topics()
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.states: queue.Queue[State] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sec-operator")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(self.topics.ack(DEVICE), 1), (self.topics.state(DEVICE), 1)]
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise AssertionError("operator never subscribed")

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.state(DEVICE):
            if not message.retain:
                self.states.put(decode(message.payload, State))
        else:
            self.acks.put(decode(message.payload, Ack))

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.topics.cmd(DEVICE), payload, qos=1).wait_for_publish(10)

    def ack_for(self, cmd_id: str, timeout: float = 20.0) -> Ack:
        deadline = time.monotonic() + timeout
        while True:  # acks of other commands are skipped
            ack = self.acks.get(timeout=max(0.1, deadline - time.monotonic()))
            if ack.cmd_id == cmd_id:
                return ack

    def wait_online(self, timeout: float = 30.0) -> None:
        while self.states.get(timeout=timeout).status != DeviceStatus.ONLINE:
            pass

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LiveDevice:
    """A running agent whose trust lists `command_key`, with two committed bundles: release 1,
    then release 2 (so the device's anti-rollback floor is 2). With `root`, the trust file is
    a signed root document (version 1, one root key) rather than a plain store."""

    def __init__(self, workdir: Path, blazeface_model: Path, *, root: bool = False) -> None:
        self.workdir = workdir
        self.release_key = SigningKey.generate()
        self.command_key = SigningKey.generate()
        self.root_keys = [SigningKey.generate()]
        self.data_dir = workdir / "agent"
        self.trust_file = workdir / "trust.json"
        self.trust = TrustStore.from_keys(
            [self.release_key.public_key()], command_keys=[self.command_key.public_key()]
        )
        if root:
            self.trust_file.write_bytes(self.root_document(1))
        else:
            save_trust_store(self.trust, self.trust_file)
        self._preinstall(blazeface_model)
        self.broker = MosquittoBroker(workdir=workdir / "broker")
        self.broker.start()
        self.operator = Operator(self.broker.port)
        self.agent: Agent | None = None
        self._thread: threading.Thread | None = None
        self.start()

    def _preinstall(self, blazeface_model: Path) -> None:
        store = SlotStore(self.data_dir / "bundles")
        now = datetime.now(timezone.utc)
        for version, release in ((1, 1), (2, 2)):
            spec = example_spec("blazeface-short", version=version, release=release)
            out = self.workdir / f"blazeface-{version}.bundle"
            built = build_bundle(spec, self.workdir, [self.release_key], out, now)
            store.commit(store.install(built.path, self.trust, now).digest)

    def root_document(
        self,
        version: int,
        *,
        signers: list[SigningKey] | None = None,
        root_keys: list[SigningKey] | None = None,
        command_keys: list[SigningKey] | None = None,
        expires_days: float = 365,
    ) -> bytes:
        """A root naming the device's keys (or those given), signed by `signers`
        (default: the root keys)."""
        keys = root_keys or self.root_keys
        signed = root_signed(
            version=version,
            expires=datetime.now(timezone.utc) + timedelta(days=expires_days),
            root_keys=[k.public_key() for k in keys],
            root_threshold=1,
            release_keys=[self.release_key.public_key()],
            release_threshold=1,
            command_keys=[k.public_key() for k in command_keys or [self.command_key]],
        )
        return sign_root(signed, signers if signers is not None else keys)

    def settings(self) -> AgentSettings:
        return AgentSettings(
            device_id=DEVICE,
            data_dir=self.data_dir,
            trust_path=self.trust_file,
            mqtt={"port": self.broker.port, "keepalive": 5},
            profile="generic-x86-64",
            health_interval_s=600,
        )

    def start(self) -> None:
        self.agent = Agent(self.settings())
        self._thread = threading.Thread(target=self.agent.run, daemon=True)
        self._thread.start()
        self.operator.wait_online()

    def stop(self) -> None:
        if self.agent is not None and self._thread is not None:
            self.agent.stop()
            self._thread.join(30)
            if self._thread.is_alive():
                raise AssertionError("the agent did not stop")
        self.agent = None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.operator.close()
            self.broker.close()

    def signed(self, command: CommandEnvelope, key: SigningKey | None = None, **times: float):
        """`command` signed by `key` (default: the device's command key), valid from now."""
        now = times.get("at", time.time())
        return sign_command(
            command, [key or self.command_key], now=now, ttl_s=times.get("ttl", 60.0)
        )

    def send(self, command: CommandEnvelope) -> Ack:
        self.operator.publish(encode(command))
        return self.operator.ack_for(command.id)

    def disk(self) -> dict[str, bytes]:
        """Slots, floors, trust store, settings overlay, downloads: every file the device keeps
        but the outbox and the seen-id store."""
        found = {"trust.json": self.trust_file.read_bytes()}
        for path in sorted(self.data_dir.rglob("*")):
            relative = path.relative_to(self.data_dir)
            if path.is_file() and not relative.parts[0].startswith(_VOLATILE):
                found[str(relative)] = path.read_bytes()
        return found


def live_device(
    workdir: Path, blazeface_model: Path, *, root: bool = False
) -> Iterator[LiveDevice]:
    device = LiveDevice(workdir, blazeface_model, root=root)
    try:
        yield device
    finally:
        device.close()
