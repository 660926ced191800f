"""The receiving end of a chunked bundle transfer: hand it bytes, it keeps what it has.

Chunks land at their offset in a `.part` file, a bitmap of received chunks is saved beside it,
so an agent restart resumes with only the missing chunks. The finished file is checked against
the offered digest before it is renamed into place; the signature check happens afterwards in
`ota.verify`, on the complete file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ota.atomic import fsync_dir

_HASH_BLOCK = 1 << 20
# the received-chunks map is one byte per chunk and is scanned on the control thread
MAX_CHUNKS = 1 << 16
# a receiver reports how far it got at least this often: the sender keeps what each reader has
# not read yet within a window of the broker's per-client queue, and can do that only as finely
# as it hears (controller.bundles.chunks)
PROGRESS_STEP_BYTES = 256 << 10


class TransferError(Exception):
    """The transfer cannot go on: a chunk that does not fit the offer, or a bad digest."""


class BadChunk(TransferError):
    """One chunk whose bytes do not match the offer's digest for it; dropped, the rest stays."""


@dataclass(frozen=True)
class Offer:
    """What the sender promised: the whole file's digest and size, and how it is cut."""

    digest: str
    size: int
    chunk_size: int
    chunks: int
    chunk_digests: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        expected = -(-self.size // self.chunk_size) if self.chunk_size > 0 else -1
        if self.size <= 0 or self.chunk_size <= 0 or self.chunks != expected:
            raise TransferError(
                f"offer of {self.size} bytes in {self.chunks} chunks of {self.chunk_size} "
                "does not add up"
            )
        if self.chunks > MAX_CHUNKS:
            raise TransferError(f"offer of {self.chunks} chunks, at most {MAX_CHUNKS}")
        if self.chunk_digests and len(self.chunk_digests) != self.chunks:
            raise TransferError(
                f"offer lists {len(self.chunk_digests)} chunk digests for {self.chunks} chunks"
            )

    @property
    def progress_step(self) -> int:
        """Chunks between two progress reports: a tenth of the bundle, at most 256 KiB of it."""
        return max(1, min(-(-self.chunks // 10), PROGRESS_STEP_BYTES // self.chunk_size))

    def chunk_length(self, index: int) -> int:
        if index == self.chunks - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size


class ChunkAssembler:
    """Assembles one offered bundle from chunks arriving in any order, any number of times."""

    def __init__(self, directory: Path, offer: Offer) -> None:
        self.offer = offer
        directory.mkdir(parents=True, exist_ok=True)
        self.part_path = directory / f"{offer.digest}.part"
        self.map_path = directory / f"{offer.digest}.chunks"
        self.final_path = directory / f"{offer.digest}.bundle"
        self._have = bytearray(offer.chunks)
        self._load_progress()

    def _load_progress(self) -> None:
        if not self.part_path.exists():
            return
        try:
            saved = json.loads(self.map_path.read_text())
            if saved.get("size") == self.offer.size and saved.get("chunk_size") == (
                self.offer.chunk_size
            ):
                for index in saved.get("have", []):
                    if isinstance(index, int) and 0 <= index < self.offer.chunks:
                        self._have[index] = 1
        except (OSError, ValueError):
            # A torn progress file only costs re-fetching; the final digest check guards bytes.
            self._have = bytearray(self.offer.chunks)

    def save_progress(self) -> None:
        """Persist which chunks are on disk (after fsync of the data they describe)."""
        if not self.part_path.exists():
            return
        with self.part_path.open("rb+") as part:
            os.fsync(part.fileno())
        tmp = self.map_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "size": self.offer.size,
                    "chunk_size": self.offer.chunk_size,
                    "have": [i for i, v in enumerate(self._have) if v],
                }
            )
        )
        os.replace(tmp, self.map_path)

    def add(self, index: int, total: int, data: bytes) -> bool:
        """Store one chunk; returns False for a duplicate. Raises TransferError on a misfit."""
        if total != self.offer.chunks or not 0 <= index < total:
            raise TransferError(f"chunk {index}/{total} does not fit an offer of {total} chunks")
        if len(data) != self.offer.chunk_length(index):
            raise TransferError(
                f"chunk {index} has {len(data)} bytes, expected {self.offer.chunk_length(index)}"
            )
        if self._have[index]:
            return False
        # checked before the write: a forged chunk never reaches the .part file
        digests = self.offer.chunk_digests
        if digests and hashlib.sha256(data).hexdigest() != digests[index]:
            raise BadChunk(f"chunk {index} does not match its digest in the offer")
        flags = os.O_RDWR | os.O_CREAT
        fd = os.open(self.part_path, flags, 0o600)
        try:
            os.pwrite(fd, data, index * self.offer.chunk_size)
        finally:
            os.close(fd)
        self._have[index] = 1
        return True

    def has(self, index: int) -> bool:
        """Whether chunk `index` is on disk."""
        return 0 <= index < self.offer.chunks and bool(self._have[index])

    @property
    def received(self) -> int:
        return self._have.count(1)

    @property
    def complete(self) -> bool:
        return self.received == self.offer.chunks

    def missing_ranges(self, limit: int = 256) -> list[tuple[int, int]]:
        """Inclusive ranges of chunks not yet received, at most `limit` of them."""
        ranges: list[tuple[int, int]] = []
        start: int | None = None
        for index, have in enumerate(self._have):
            if not have and start is None:
                start = index
            elif have and start is not None:
                ranges.append((start, index - 1))
                start = None
                if len(ranges) >= limit:
                    return ranges
        if start is not None:
            ranges.append((start, self.offer.chunks - 1))
        return ranges[:limit]

    def finish(self) -> Path:
        """Check the whole file against the offered digest and move it into place.

        Raises TransferError (and forgets the received chunks) when the digest does not match.
        """
        if self.final_path.exists():
            return self.final_path
        if not self.complete:
            raise TransferError(f"{self.offer.chunks - self.received} chunks still missing")
        digest = hashlib.sha256()
        with self.part_path.open("rb") as part:
            os.fsync(part.fileno())
            while block := part.read(_HASH_BLOCK):
                digest.update(block)
        if digest.hexdigest() != self.offer.digest:
            self.discard()
            raise TransferError(
                f"assembled bundle has digest {digest.hexdigest()}, offer said {self.offer.digest}"
            )
        os.replace(self.part_path, self.final_path)
        self.map_path.unlink(missing_ok=True)
        fsync_dir(self.final_path.parent)
        return self.final_path

    def discard(self) -> None:
        for path in (self.part_path, self.map_path):
            path.unlink(missing_ok=True)
        self._have = bytearray(self.offer.chunks)


def chunk_digests(path: Path, chunk_size: int) -> tuple[str, ...]:
    """The sha256 of each `chunk_size` piece of the file at `path`, in order. Raises OSError."""
    out = []
    with path.open("rb") as src:
        while block := src.read(chunk_size):
            out.append(hashlib.sha256(block).hexdigest())
    return tuple(out)
