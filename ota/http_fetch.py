"""Downloading a bundle over HTTP with range requests: resumable, bounded, verified.

The bytes go to `<digest>.http.part`; a later call (or a retry after a cut connection) asks for
`Range: bytes=N-` and appends. Only a file whose sha256 matches the offer is renamed to
`<digest>.bundle`; anything else is deleted, so a truncated or corrupted download is never
left looking good. The httpx client is passed in, so the transport is the caller's choice.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx

from ota.atomic import fsync_dir
from ota.digest import file_digest
from protocol.events import RefusalReason, TransferReason
from protocol.messages import TRANSFER_TOKEN_HEADER

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# statuses worth asking again for: the server is busy or briefly broken
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

Progress = Callable[[int, int], None]
"""Called with (bytes on disk, total bytes) as the download grows."""
RetryNotice = Callable[[int, float, "FetchError"], None]
"""Called with (failed attempt number, delay before the next one, what went wrong)."""


class FetchError(Exception):
    """The download did not produce a verified file; `reason` is the code reports carry."""

    reason: ClassVar[TransferReason | RefusalReason] = TransferReason.DOWNLOAD_FAILED


class FetchStalled(FetchError):
    """The server stopped sending (read timeout or cut connection) more times than allowed."""

    reason = TransferReason.STALLED


class FetchHttpStatus(FetchError):
    """The server answered with a status that a retry will not fix (or it kept failing)."""

    reason = TransferReason.HTTP_STATUS

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class FetchBadResponse(FetchError):
    """The server's answer does not fit the offer: wrong Content-Range, length or extra bytes."""

    reason = TransferReason.BAD_RESPONSE


class FetchDigestMismatch(FetchError):
    """The whole file arrived but its sha256 is not the offered one; the file was deleted."""

    reason = RefusalReason.HASH_MISMATCH


class FetchCancelled(FetchError):
    """The caller asked the download to stop; the partial file is kept for a later resume."""

    reason = TransferReason.CANCELLED


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to ask again after a stall or a transient server error."""

    attempts: int = 6
    """most consecutive attempts that bring no new bytes before giving up"""
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.5
    """each delay is scaled by a random factor in [1 - jitter, 1 + jitter]"""
    read_timeout_s: float = 15.0
    connect_timeout_s: float = 10.0

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, failures - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


@dataclass(frozen=True)
class Wanted:
    """The file the offer promised: where to get it, its sha256 and its size."""

    url: str
    digest: str
    size: int
    # the offer's per-command credential, sent back as a header
    token: str | None = None


def part_path(directory: Path, digest: str) -> Path:
    return directory / f"{digest}.http.part"


def final_path(directory: Path, digest: str) -> Path:
    return directory / f"{digest}.bundle"


def fetch_bundle(
    client: httpx.Client,
    wanted: Wanted,
    directory: Path,
    *,
    policy: RetryPolicy | None = None,
    progress: Progress | None = None,
    on_retry: RetryNotice | None = None,
    cancel: threading.Event | None = None,
    rng: random.Random | None = None,
) -> Path:
    """Download `wanted` into `directory`, resuming a partial file, and return the verified path.

    Raises FetchStalled, FetchHttpStatus, FetchBadResponse, FetchDigestMismatch, FetchCancelled.
    """
    policy = policy or RetryPolicy()
    rng = rng or random.Random()
    cancel = cancel or threading.Event()
    directory.mkdir(parents=True, exist_ok=True)
    final = final_path(directory, wanted.digest)
    if final.exists() and file_digest(final)[0] == wanted.digest:
        return final
    part = part_path(directory, wanted.digest)
    failures = 0
    # progress resets `failures`, so this only bounds a server that trickles a little each time
    for _attempt in range(policy.attempts * 8):
        if cancel.is_set():
            raise FetchCancelled(f"download of {wanted.digest[:12]} cancelled")
        before = _size(part)
        try:
            _one_attempt(client, wanted, part, policy, progress, cancel)
            break
        except (FetchStalled, _Retryable) as exc:
            error: FetchError = exc if isinstance(exc, FetchError) else FetchStalled(str(exc))
            if isinstance(exc, _Retryable) and exc.status is not None:
                error = FetchHttpStatus(exc.status, str(exc))
        failures = 0 if _size(part) > before else failures + 1
        if failures >= policy.attempts:
            raise error
        delay = policy.delay(max(1, failures), rng)
        log.warning(
            "event=download_retry digest=%s failures=%d delay_s=%.2f error=%r",
            wanted.digest[:12],
            failures,
            delay,
            str(error),
        )
        if on_retry is not None:
            on_retry(failures, delay, error)
        if cancel.wait(delay):
            raise FetchCancelled(f"download of {wanted.digest[:12]} cancelled")
    else:
        raise FetchStalled(f"gave up on {wanted.digest[:12]} after {policy.attempts * 8} attempts")
    return _verify_and_place(part, final, wanted)


class _Retryable(Exception):
    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class _RestartFromZero(_Retryable):
    pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _one_attempt(
    client: httpx.Client,
    wanted: Wanted,
    part: Path,
    policy: RetryPolicy,
    progress: Progress | None,
    cancel: threading.Event,
) -> None:
    have = _size(part)
    if have > wanted.size:
        part.unlink()  # longer than the offer: cannot be the offered file
        have = 0
    if have == wanted.size:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    if wanted.token is not None:
        headers[TRANSFER_TOKEN_HEADER] = wanted.token
    timeout = httpx.Timeout(
        policy.read_timeout_s, connect=policy.connect_timeout_s, pool=policy.connect_timeout_s
    )
    try:
        with client.stream("GET", wanted.url, headers=headers, timeout=timeout) as response:
            start = _check_response(response, have, wanted.size)
            _write_body(response, part, start, wanted.size, progress, cancel)
    except _RestartFromZero:
        part.unlink(missing_ok=True)
        raise
    except FetchBadResponse:
        # what the server sent does not fit the offer, so neither may the bytes kept so far
        part.unlink(missing_ok=True)
        raise
    except httpx.TimeoutException as exc:
        raise FetchStalled(f"no bytes for {policy.read_timeout_s}s: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        # a connection cut mid-body shows up as RemoteProtocolError/ReadError
        raise FetchStalled(f"connection lost: {type(exc).__name__}: {exc}") from exc


def _check_response(response: httpx.Response, have: int, size: int) -> int:
    """The offset the body starts at; raises FetchBadResponse, FetchHttpStatus, _Retryable."""
    status = response.status_code
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is None:
            raise FetchBadResponse(
                f"206 without a usable Content-Range: {response.headers.get('content-range')!r}"
            )
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != have or last != size - 1 or (total != "*" and int(total) != size):
            raise FetchBadResponse(
                f"asked for bytes {have}-{size - 1}/{size}, got {first}-{last}/{total}"
            )
        return first
    if status == 200:
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) != size:
            raise FetchBadResponse(f"server has {length} bytes, the offer says {size}")
        return 0  # the server ignored our Range: start over from byte 0
    if status == 416:
        # our partial file does not fit what the server has: start over from byte 0
        raise _RestartFromZero("416 range not satisfiable; restarting from zero")
    if status in _RETRY_STATUSES:
        raise _Retryable(f"server busy or failing ({response.reason_phrase})", status)
    raise FetchHttpStatus(status, response.reason_phrase or "refused")


def _write_body(
    response: httpx.Response,
    part: Path,
    start: int,
    size: int,
    progress: Progress | None,
    cancel: threading.Event,
) -> None:
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, start)
        os.lseek(fd, start, os.SEEK_SET)
        written = start
        for block in response.iter_bytes():  # as they come: a stall keeps what arrived
            if written + len(block) > size:
                raise FetchBadResponse(f"server sent more than the {size} offered bytes")
            os.write(fd, block)
            written += len(block)
            if progress is not None:
                progress(written, size)
            if cancel.is_set():
                raise FetchCancelled("download cancelled")
        os.fsync(fd)
    finally:
        os.close(fd)
    if written < size:
        raise FetchStalled(f"body ended at {written} of {size} bytes")


def _verify_and_place(part: Path, final: Path, wanted: Wanted) -> Path:
    got, _ = file_digest(part)
    if got != wanted.digest:
        part.unlink(missing_ok=True)
        raise FetchDigestMismatch(f"downloaded file has sha256 {got}, offer said {wanted.digest}")
    os.replace(part, final)
    fsync_dir(final.parent)
    return final
