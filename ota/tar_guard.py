"""A guard between a bundle's raw bytes and `tarfile`: it reads every 512-byte header first.

`tarfile` reads a PAX or GNU extended header's payload whole into memory (a 48 MiB long name
costs well over 48 MiB) and stops at the first zero block without looking at what follows. The
guard sees each header before `tarfile` does, so it refuses an extended header that is too big,
chained or of a kind bundles never carry before any of its payload is handed on, and it checks
that nothing but zero padding follows the end-of-archive marker.

A problem found ahead of `tarfile` is raised only when `tarfile` asks for the bytes where it
lies, so an earlier problem (a bad signature, an unsafe member) keeps its own reason.
"""

from __future__ import annotations

import tarfile
from typing import Protocol

from ota.errors import BundleRefused
from protocol.events import RefusalReason as R

BLOCK = 512
RECORD = 20 * BLOCK
# room for a path of PATH_MAX bytes; bundle paths are far shorter
MAX_EXTENDED_HEADER_BYTES = 4096
# an extended header describes the member after it; x, L and K together make three
MAX_EXTENDED_IN_A_ROW = 3

_LOCAL_EXTENDED = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_NAME_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# these change how tarfile sizes or places the members after them; bundles never need them
_PAX_REFUSED_KEYS = (b"size=", b"GNU.sparse")
# member types whose size field tarfile ignores (no data follows their header)
_NO_DATA = (
    tarfile.LNKTYPE,
    tarfile.SYMTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class TarGuard:
    """Hands a tar stream on to `tarfile`, header by header checked; `count` bytes handed on."""

    def __init__(self, raw: _Readable, max_extended: int = MAX_EXTENDED_HEADER_BYTES) -> None:
        self._raw = raw
        self._max_extended = max_extended
        self.count = 0
        self._pending = b""
        self._scanned = 0
        self._error: BundleRefused | None = None
        self._fail_at = 0
        self._next_header = 0
        self._header = bytearray()
        self._in_a_row = 0
        self._pax: bytearray | None = None
        self._pax_size = 0
        self._pax_at = 0
        self._end_at: int | None = None
        self._eof = False

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (-1: a block of the stream). Raises BundleRefused."""
        if not self._pending and not self._eof and self._error is None:
            data = self._raw.read(size if size > 0 else 1 << 20)
            if not data:
                self._eof = True
            self._scan(data)
            self._pending = data
        if self._error is not None and self.count >= self._fail_at:
            raise self._error
        limit = len(self._pending) if size < 0 else size
        if self._error is not None:
            limit = min(limit, self._fail_at - self.count)
        out, self._pending = self._pending[:limit], self._pending[limit:]
        self.count += len(out)
        return out

    def finish(self, end_offset: int) -> None:
        """Check the end: `tarfile` stopped at `end_offset`; only zero padding may follow the
        two zero blocks there, up to the record size. Raises BundleRefused."""
        if self._error is not None:
            raise self._error
        if self._end_at is None or self._end_at != end_offset:
            raise BundleRefused(
                R.MALFORMED_BUNDLE, f"no end-of-archive marker at offset {end_offset}"
            )
        allowed_end = _round_up(self._end_at + 2 * BLOCK, RECORD)
        while not self._eof and self._error is None:
            # one byte more than may come, so a longer tail is seen without reading it all
            data = self._raw.read(max(1, allowed_end + 1 - self._scanned))
            if not data:
                self._eof = True
            self._scan(data)
        if self._error is not None:
            raise self._error
        if self._scanned < self._end_at + 2 * BLOCK:
            raise BundleRefused(R.MALFORMED_BUNDLE, "the end-of-archive marker is cut short")

    def _fail(self, at: int, reason: R, detail: str) -> None:
        if self._error is None:
            self._error = BundleRefused(reason, detail)
            self._fail_at = at

    def _scan(self, data: bytes) -> None:
        base = self._scanned
        self._scanned += len(data)
        pos = 0
        while pos < len(data) and self._error is None:
            at = base + pos
            if self._end_at is not None:
                self._scan_tail(data[pos:], at)
                return
            if at < self._next_header:
                step = min(self._next_header - at, len(data) - pos)
                if self._pax is not None:
                    self._pax += data[pos : pos + step]
                pos += step
                continue
            if self._pax is not None:
                self._check_pax()
                if self._error is not None:
                    return
            take = data[pos : pos + BLOCK - len(self._header)]
            self._header += take
            pos += len(take)
            if len(self._header) == BLOCK:
                self._on_header(bytes(self._header), self._next_header)
                self._header.clear()

    def _on_header(self, block: bytes, at: int) -> None:
        if block.count(0) == BLOCK:
            self._end_at = at
            return
        if not _checksum_ok(block):
            self._fail(at, R.MALFORMED_BUNDLE, f"header at offset {at} fails its checksum")
            return
        kind = block[156:157]
        size = _number(block[124:136])
        if size is None or size < 0:
            self._fail(at, R.MALFORMED_BUNDLE, f"header at offset {at} has no valid size")
            return
        extended = kind in _LOCAL_EXTENDED or kind in _NAME_EXTENDED
        self._in_a_row = self._in_a_row + 1 if extended else 0
        if kind == tarfile.XGLTYPE:
            self._fail(at, R.EXTENDED_HEADER, f"global PAX header at offset {at}")
        elif kind == tarfile.GNUTYPE_SPARSE:
            self._fail(at, R.UNSAFE_MEMBER, f"GNU sparse member at offset {at}")
        elif extended and size > self._max_extended:
            self._fail(
                at,
                R.EXTENDED_HEADER,
                f"extended header of {size} bytes at offset {at}, cap {self._max_extended}",
            )
        elif self._in_a_row > MAX_EXTENDED_IN_A_ROW:
            self._fail(at, R.EXTENDED_HEADER, f"{self._in_a_row} extended headers in a row")
        if self._error is not None:
            return
        if kind in _LOCAL_EXTENDED:
            self._pax, self._pax_size, self._pax_at = bytearray(), size, at
        # tarfile turns an old-style file whose name ends in / into a folder, with no data
        name = block[:100].split(b"\0", 1)[0]
        no_data = kind in _NO_DATA or (kind == tarfile.AREGTYPE and name.endswith(b"/"))
        self._next_header = at + BLOCK + (0 if no_data else _round_up(size, BLOCK))

    def _check_pax(self) -> None:
        records = bytes(self._pax or b"")[: self._pax_size]
        self._pax = None
        for key in _PAX_REFUSED_KEYS:
            if key in records:
                self._fail(
                    self._pax_at,
                    R.EXTENDED_HEADER,
                    f"PAX header at offset {self._pax_at} sets {key.decode().rstrip('=')}",
                )
                return

    def _scan_tail(self, data: bytes, at: int) -> None:
        end_at = self._end_at if self._end_at is not None else at
        allowed_end = _round_up(end_at + 2 * BLOCK, RECORD)
        inside = data[: max(0, allowed_end - at)]
        if inside.count(0) != len(inside):
            first = at + next(i for i, byte in enumerate(inside) if byte)
            self._fail(first, R.TRAILING_DATA, f"non-zero byte at offset {first} after the end")
        elif len(data) > len(inside):
            self._fail(
                allowed_end, R.TRAILING_DATA, f"bytes after the end-of-archive at {allowed_end}"
            )


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _number(field: bytes) -> int | None:
    """A header number as tarfile reads it (octal text or base-256), None if unreadable."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return stored is not None and stored in (unsigned, signed)
