"""A minimal RTSP relay for tests: ffmpeg publishes into it, the agent plays from it.

ffmpeg's RTSP muxer cannot listen for players (its `-rtsp_flags listen` is an input option), so
a camera-like server is built here: it accepts one publisher (ANNOUNCE/SETUP/RECORD with TCP
interleaving) and forwards its RTP frames to every player (DESCRIBE/SETUP/PLAY). When the
publisher goes away the players are disconnected and DESCRIBE answers 404, as a camera that
lost its sensor would; that is what the reconnect tests need.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO


def _read_request(stream: BinaryIO) -> tuple[str, dict[str, str], bytes] | None:
    """One RTSP request (skipping interleaved frames a player may send); None at EOF."""
    while True:
        first = stream.read(1)
        if not first:
            return None
        if first == b"$":  # interleaved RTCP from a player: not needed here
            header = stream.read(3)
            if len(header) < 3:
                return None
            stream.read(int.from_bytes(header[1:3], "big"))
            continue
        line = first + stream.readline()
        if line.strip():
            break
    headers: dict[str, str] = {}
    while True:
        raw = stream.readline()
        if not raw or not raw.strip():
            break
        key, _, value = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return line.decode("latin-1").strip(), headers, body


class RtspRelay:
    """Relays one published stream at rtsp://127.0.0.1:PORT/cam to any number of players."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self._lock = threading.Lock()
        self._sdp: bytes | None = None
        self._players: list[socket.socket] = []
        self.publishers = 0
        self._published = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def wait_published(self, count: int, timeout: float) -> bool:
        """Block until `count` publishers have announced a stream; False on timeout."""
        with self._published:
            return self._published.wait_for(lambda: self.publishers >= count, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._drop_players()

    def _drop_players(self) -> None:
        with self._lock:
            players, self._players = self._players, []
        for conn in players:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _reply(self, conn: socket.socket, cseq: str, status: str = "200 OK", **extra: str) -> None:
        body = extra.pop("body", "").encode()
        lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", "Session: 12345678"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
        if body:
            lines += ["Content-Type: application/sdp", f"Content-Length: {len(body)}"]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _serve(self, conn: socket.socket) -> None:
        stream = conn.makefile("rb")
        try:
            while True:
                request = _read_request(stream)
                if request is None:
                    return
                line, headers, body = request
                method, url = line.split()[:2]
                cseq = headers.get("cseq", "0")
                if method == "ANNOUNCE":
                    with self._lock:
                        self._sdp = body
                        self.publishers += 1
                        self._published.notify_all()
                    self._reply(conn, cseq)
                elif method == "DESCRIBE":
                    sdp = self._sdp
                    if sdp is None:
                        self._reply(conn, cseq, "404 Not Found")
                    else:
                        self._reply(conn, cseq, Content_Base=url + "/", body=sdp.decode())
                elif method == "SETUP":
                    transport = headers.get("transport", "")
                    if "TCP" not in transport:
                        self._reply(conn, cseq, "461 Unsupported Transport")
                    else:
                        self._reply(conn, cseq, Transport=transport)
                elif method == "PLAY":
                    self._reply(conn, cseq, Range="npt=0.000-")
                    with self._lock:
                        self._players.append(conn)
                elif method == "RECORD":
                    self._reply(conn, cseq)
                    self._publish(stream)
                    return
                else:  # OPTIONS, GET_PARAMETER keep-alives, TEARDOWN
                    self._reply(conn, cseq, Public="DESCRIBE, SETUP, PLAY, ANNOUNCE, RECORD")
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                if conn in self._players:
                    self._players.remove(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _publish(self, stream: BinaryIO) -> None:
        """Forward the publisher's interleaved frames until it leaves, then drop the players."""
        try:
            while True:
                header = stream.read(4)
                if len(header) < 4 or header[:1] != b"$":
                    return
                frame = header + stream.read(int.from_bytes(header[2:4], "big"))
                with self._lock:
                    players = list(self._players)
                for player in players:
                    try:
                        player.sendall(frame)
                    except OSError:
                        with self._lock:
                            if player in self._players:
                                self._players.remove(player)
        finally:
            with self._lock:
                self._sdp = None
            self._drop_players()


def start_publisher(clip: Path, url: str) -> subprocess.Popen[bytes]:
    """ffmpeg publishing `clip` in a loop, in real time, as MPEG-4 video over RTSP/TCP."""
    command = "ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i CLIP -c:v mpeg4 -g 5"
    command += " -f rtsp -rtsp_transport tcp URL"
    argv = [str(clip) if a == "CLIP" else url if a == "URL" else a for a in command.split()]
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
