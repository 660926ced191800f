"""HTTP range downloads against a real local HTTP server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ota.http_fetch import (
    FetchBadResponse,
    FetchCancelled,
    FetchDigestMismatch,
    FetchError,
    FetchHttpStatus,
    FetchStalled,
    RetryPolicy,
    Wanted,
    fetch_bundle,
    final_path,
    part_path,
)
from protocol.events import RefusalReason, TransferReason

PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05, read_timeout_s=0.3)


@dataclass
class Script:
    """What the server does on each request, in order; `ok` once the list runs out."""

    plans: list[str] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, *_args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        script = self.script
        plan = script.plans.pop(0) if script.plans else "ok"
        header = self.headers.get("Range")
        script.ranges.append(header)
        start = int(header.split("=")[1].rstrip("-")) if header and plan != "ignore_range" else 0
        if plan.startswith("status:"):
            self.send_response(int(plan.split(":")[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = PAYLOAD[start:]
        if plan == "corrupt":
            body = body[:10] + bytes([body[10] ^ 0xFF]) + body[11:]
        self.send_response(206 if start else 200)
        if start:
            first = start + 7 if plan == "bad_range" else start
            self.send_header("Content-Range", f"bytes {first}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if plan == "cut":
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        if plan in ("stall", "hang"):
            self.wfile.write(body[:1000] if plan == "stall" else b"")
            self.wfile.flush()
            script.release.wait(5)  # hold the connection open, sending nothing more
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("Handler", (_Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/bundle", script
    finally:
        script.release.set()
        httpd.shutdown()
        httpd.server_close()


def fetch(url: str, tmp_path: Path, **kwargs: object) -> Path:
    with httpx.Client() as client:
        return fetch_bundle(
            client,
            Wanted(url, DIGEST, len(PAYLOAD)),
            tmp_path,
            policy=kwargs.pop("policy", FAST),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )


def test_a_cut_connection_resumes_with_a_range_request(server, tmp_path):
    url, script = server
    script.plans = ["cut"]
    seen: list[int] = []
    retries: list[str] = []
    path = fetch(
        url,
        tmp_path,
        progress=lambda have, total: seen.append(have),
        on_retry=lambda n, delay, err: retries.append(err.reason),
    )
    assert path.read_bytes() == PAYLOAD
    assert path == final_path(tmp_path, DIGEST)
    assert not part_path(tmp_path, DIGEST).exists()
    cut_at = len(PAYLOAD) // 3
    assert script.ranges == [None, f"bytes={cut_at}-"]
    assert retries == [TransferReason.STALLED]
    assert retries[0] == "stalled"
    assert seen == sorted(seen) and seen[-1] == len(PAYLOAD)


def test_a_partial_file_from_an_earlier_run_is_resumed_not_refetched(server, tmp_path):
    url, script = server
    part_path(tmp_path, DIGEST).write_bytes(PAYLOAD[:123_456])
    path = fetch(url, tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert script.ranges == ["bytes=123456-"]


def test_a_server_that_ignores_range_restarts_the_file_from_zero(server, tmp_path):
    url, script = server
    part_path(tmp_path, DIGEST).write_bytes(b"x" * 5000)  # wrong bytes, would fail the digest
    script.plans = ["ignore_range"]
    assert fetch(url, tmp_path).read_bytes() == PAYLOAD


def test_a_wrong_content_range_is_refused_and_the_partial_file_dropped(server, tmp_path):
    url, script = server
    part_path(tmp_path, DIGEST).write_bytes(PAYLOAD[:1000])
    script.plans = ["bad_range"]
    with pytest.raises(FetchBadResponse, match="asked for bytes 1000-"):
        fetch(url, tmp_path)
    assert not part_path(tmp_path, DIGEST).exists()
    assert not final_path(tmp_path, DIGEST).exists()


def test_a_corrupted_download_is_refused_and_never_left_as_good(server, tmp_path):
    url, script = server
    script.plans = ["corrupt"]
    with pytest.raises(FetchDigestMismatch) as caught:
        fetch(url, tmp_path)
    assert caught.value.reason is RefusalReason.HASH_MISMATCH
    assert not part_path(tmp_path, DIGEST).exists()
    assert not final_path(tmp_path, DIGEST).exists()
    # the next try starts clean and succeeds
    assert fetch(url, tmp_path).read_bytes() == PAYLOAD


def test_a_stalled_server_is_retried_with_backoff_then_reported_stalled(server, tmp_path):
    url, script = server
    script.plans = ["stall"] + ["hang"] * 10
    retries: list[float] = []
    with pytest.raises(FetchStalled, match=r"no bytes for 0\.3s"):
        fetch(url, tmp_path, on_retry=lambda n, delay, err: retries.append(delay))
    # first attempt brings 1000 bytes (progress), the next three bring none: gave up after 3
    assert len(script.ranges) == 4
    assert script.ranges[1:] == ["bytes=1000-"] * 3
    assert len(retries) == 3
    # what did arrive is kept for a later resume, but never as a finished bundle
    assert part_path(tmp_path, DIGEST).stat().st_size == 1000
    assert not final_path(tmp_path, DIGEST).exists()


def test_a_busy_server_is_retried_and_a_missing_bundle_is_not(server, tmp_path):
    url, script = server
    script.plans = ["status:503", "status:503"]
    assert fetch(url, tmp_path).read_bytes() == PAYLOAD
    assert len(script.ranges) == 3

    final_path(tmp_path, DIGEST).unlink()
    script.plans = ["status:404"]
    script.ranges.clear()
    with pytest.raises(FetchHttpStatus) as caught:
        fetch(url, tmp_path)
    assert caught.value.status == 404
    assert len(script.ranges) == 1


def test_retry_delays_grow_exponentially_within_the_jitter_and_the_cap():
    import random

    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, jitter=0.25)
    rng = random.Random(7)
    for failures, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delay = policy.delay(failures, rng)
        assert base * 0.75 <= delay <= base * 1.25


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (FetchError("x"), TransferReason.DOWNLOAD_FAILED),
        (FetchStalled("x"), TransferReason.STALLED),
        (FetchHttpStatus(404, "x"), TransferReason.HTTP_STATUS),
        (FetchBadResponse("x"), TransferReason.BAD_RESPONSE),
        (FetchDigestMismatch("x"), RefusalReason.HASH_MISMATCH),
        (FetchCancelled("x"), TransferReason.CANCELLED),
    ],
)
def test_every_download_failure_reports_a_reason_code_member(error, reason) -> None:
    assert error.reason is reason
