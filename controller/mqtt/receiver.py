"""MQTT 3.1.1 receiving sessions on one asyncio loop: what the ingest needs, and no more.

The ingest reads every agent's messages through a few persistent sessions and acknowledges
each QoS 1 message only after the batch holding it is committed. paho gives every session a
thread and a Python object per message, and walks its per-topic callback table for each: at
10,000 devices that cost 30-60 µs of CPU per message, more than decoding and storing it.
Here every session lives on one event loop thread, packets are cut straight out of the read
buffer, and acknowledgements are written in batches: about 5 µs per message.

What it speaks: CONNECT (client id, clean session off, keepalive, user name and password),
CONNACK, SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PUBLISH at QoS 0 and 1 received, PUBACK sent,
PINGREQ/PINGRESP, DISCONNECT; TCP or TLS (the broker's certificate checked against the CA
file, ours presented). Subscriptions ask for QoS 1 at most, so QoS 2 never arrives; a session
that receives anything it does not expect is closed and connects again. A session whose
connection drops connects again with a growing, jittered delay; the broker keeps what was not
acknowledged and sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.settings import MqttSettings

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 0x82, 0x90, 0xA2, 0xB0
PINGREQ, PINGRESP, DISCONNECT = 0xC0, 0xD0, 0xE0
# a packet bigger than this closes the session (the broker's own cap is far below)
MAX_PACKET_BYTES = 16 << 20
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def connect_packet(
    client_id: str, keepalive: int, username: str | None, password: str | None
) -> bytes:
    flags = 0  # clean session off: the broker keeps our subscriptions and unacked messages
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + payload
    return bytes([CONNECT]) + _remaining_length(len(body)) + body


def subscribe_packet(pid: int, filters: Sequence[tuple[str, int]]) -> bytes:
    body = struct.pack(">H", pid) + b"".join(_string(f) + bytes([qos]) for f, qos in filters)
    return bytes([SUBSCRIBE]) + _remaining_length(len(body)) + body


def unsubscribe_packet(pid: int, filters: Sequence[str]) -> bytes:
    body = struct.pack(">H", pid) + b"".join(_string(f) for f in filters)
    return bytes([UNSUBSCRIBE]) + _remaining_length(len(body)) + body


def puback_packet(pid: int) -> bytes:
    return bytes([PUBACK, 2]) + struct.pack(">H", pid)


class ProtocolViolation(Exception):
    """The broker sent something a receiving session does not expect."""


@dataclass(frozen=True)
class Subscription:
    """What a session does once connected: filters to drop (from an earlier configuration of
    a persistent session), then filters to subscribe."""

    unsubscribe: list[str]
    subscribe: list[tuple[str, int]]


class ReceiverEvents:
    """What the owner hears; every method runs on the receiver's loop thread."""

    def connected(self, index: int, session_present: bool) -> Subscription:
        raise NotImplementedError

    def subscribed(self, index: int, granted: list[int]) -> None:
        raise NotImplementedError

    def disconnected(self, index: int, reason: str) -> None:
        raise NotImplementedError

    def message(self, index: int, topic: str, payload: bytes, qos: int, pid: int) -> None:
        raise NotImplementedError


class _Session(asyncio.Protocol):
    """One connection of one session: cuts packets out of the stream."""

    def __init__(self, owner: Receiver, index: int) -> None:
        self.owner = owner
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.connack: asyncio.Future[tuple[bool, int]] = owner.loop.create_future()
        self.closed: asyncio.Future[str] = owner.loop.create_future()
        self.last_in = owner.loop.time()
        self.last_out = self.last_in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport if isinstance(transport, asyncio.Transport) else None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = str(exc) if exc else "closed"
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_out = self.owner.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_in = self.owner.loop.time()
        buf = self.buffer
        buf += data
        pos, end = 0, len(buf)
        try:
            while end - pos >= 2:
                length, shift, at, complete = 0, 0, pos + 1, False
                while at < end:
                    byte = buf[at]
                    at += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        raise ProtocolViolation("malformed remaining length")
                if not complete:
                    break
                if length > MAX_PACKET_BYTES:
                    raise ProtocolViolation(f"a packet of {length} bytes")
                if end - at < length:
                    break
                self._packet(buf[pos], buf, at, length)
                pos = at + length
        except (ProtocolViolation, IndexError, UnicodeDecodeError) as exc:
            log.warning("event=ingest_protocol_error session=%d error=%r", self.index, str(exc))
            del buf[:]
            if self.transport is not None:
                self.transport.close()
            return
        if pos:
            del buf[:pos]

    def _packet(self, first: int, buf: bytearray, at: int, length: int) -> None:
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            topic_len = (buf[at] << 8) | buf[at + 1]
            start = at + 2 + topic_len
            topic = buf[at + 2 : start].decode("utf-8")
            pid = 0
            if qos == 1:
                pid = (buf[start] << 8) | buf[start + 1]
                start += 2
            elif qos:
                raise ProtocolViolation(f"a QoS {qos} publish on {topic!r}")
            if start > at + length:
                raise ProtocolViolation("a PUBLISH shorter than its header")
            with memoryview(buf) as view:
                payload = bytes(view[start : at + length])
            self.owner.events.message(self.index, topic, payload, qos, pid)
        elif kind == CONNACK:
            if length != 2:
                raise ProtocolViolation("a CONNACK of the wrong size")
            if not self.connack.done():
                self.connack.set_result((bool(buf[at] & 1), buf[at + 1]))
        elif kind == SUBACK:
            self.owner.events.subscribed(self.index, list(buf[at + 2 : at + length]))
        elif kind in (PINGRESP, UNSUBACK, PUBACK):
            pass
        else:
            raise ProtocolViolation(f"an unexpected packet type {first:#04x}")


class Receiver:
    """`len(client_ids)` persistent sessions on one loop thread; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        client_ids: Sequence[str],
        events: ReceiverEvents,
        *,
        ssl_context: Callable[[], ssl.SSLContext | None] | None = None,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.client_ids = list(client_ids)
        self.events = events
        self._ssl_context = ssl_context or (lambda: client_ssl_context(settings))
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self.loop = asyncio.new_event_loop()
        self._sessions: list[_Session | None] = [None] * len(self.client_ids)
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pids = [0] * len(self.client_ids)

    # ---- lifecycle (any thread) -----------------------------------------------------------

    def start(self) -> Receiver:
        """Start the loop thread; every session connects in the background."""
        self._thread = threading.Thread(target=self._run, name="ingest-mqtt", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Say DISCONNECT on every session (the broker keeps them), close, end the thread."""
        if self._thread is None:
            if not self.loop.is_closed():  # never started: only the loop's own sockets to free
                self.loop.close()
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self._thread = None

    def ack(self, items: Sequence[tuple[int, int]]) -> None:
        """Acknowledge QoS 1 messages, given as (session index, packet id); thread-safe.

        A session connected again since a message arrived gets the acknowledgement on its new
        connection: the broker has sent that message again under the same packet id."""
        if items and not self._stopping:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to ack on
                self.loop.call_soon_threadsafe(self._write_acks, list(items))

    # ---- the loop thread ------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._tasks = [self.loop.create_task(self._keep(i)) for i in range(len(self.client_ids))]
        try:
            self.loop.run_forever()
        finally:
            for task in self._tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            self.loop.close()

    async def _shutdown(self) -> None:
        self._stopping = True
        for session in self._sessions:
            if session is not None and session.transport is not None:
                session.write(bytes([DISCONNECT, 0]))
                session.transport.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _write_acks(self, items: list[tuple[int, int]]) -> None:
        per_session: dict[int, list[bytes]] = {}
        for index, pid in items:
            per_session.setdefault(index, []).append(puback_packet(pid))
        for index, packets in per_session.items():
            session = self._sessions[index]
            if session is not None:
                session.write(b"".join(packets))

    def _next_pid(self, index: int) -> int:
        self._pids[index] = self._pids[index] % 0xFFFF + 1
        return self._pids[index]

    async def _keep(self, index: int) -> None:
        """Connect session `index`, serve it until it drops, and connect again."""
        low, high = self._reconnect
        delay = low
        while not self._stopping:
            reason = "connect failed"
            try:
                reason = await self._serve(index)
                delay = low
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionError, ssl.SSLError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                log.warning(
                    "event=ingest_connect_failed session=%d retry_in_s=%.1f error=%r",
                    index,
                    delay,
                    reason,
                )
            finally:
                self._sessions[index] = None
            if self._stopping:
                return
            self.events.disconnected(index, reason)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(high, delay * 2)

    async def _serve(self, index: int) -> str:
        s = self.settings
        context = self._ssl_context()
        _transport, session = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: _Session(self, index),
                s.host,
                s.port,
                ssl=context,
                server_hostname=s.host if context is not None else None,
            ),
            timeout=max(10.0, s.keepalive_s),
        )
        session.write(connect_packet(self.client_ids[index], s.keepalive_s, s.username, s.password))
        try:
            present, code = await asyncio.wait_for(session.connack, timeout=s.keepalive_s)
        except BaseException:
            if session.transport is not None:
                session.transport.close()
            raise
        if code != 0:
            if session.transport is not None:
                session.transport.close()
            raise ConnectionError(f"refused: {CONNACK_REASONS.get(code, code)}")
        self._sessions[index] = session
        plan = self.events.connected(index, present)
        if plan.unsubscribe:
            session.write(unsubscribe_packet(self._next_pid(index), plan.unsubscribe))
        if plan.subscribe:
            session.write(subscribe_packet(self._next_pid(index), plan.subscribe))
        else:  # a SUBSCRIBE names at least one filter: nothing to wait for
            self.events.subscribed(index, [])
        return await self._ping_until_closed(session)

    async def _ping_until_closed(self, session: _Session) -> str:
        keepalive = float(self.settings.keepalive_s)
        while not session.closed.done():
            done, _ = await asyncio.wait({session.closed}, timeout=keepalive / 2)
            if done:
                break
            now = self.loop.time()
            if now - session.last_in > keepalive * 1.5:
                log.warning("event=ingest_keepalive_timeout session=%d", session.index)
                if session.transport is not None:
                    session.transport.close()
                continue
            if now - session.last_out >= keepalive / 2 or now - session.last_in >= keepalive / 2:
                session.write(bytes([PINGREQ, 0]))
        return session.closed.result()


def client_ssl_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """TLS as the controller's other clients use it: the broker's certificate against the CA
    file, the host name checked, our certificate presented; None for plain TCP."""
    if settings.ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    if settings.cert_file is not None:
        context.load_cert_chain(
            str(settings.cert_file), str(settings.key_file) if settings.key_file else None
        )
    return context
