"""In-flight chunked downloads, written beside their `.part` files so a restart resumes them.

One `<digest>.offer.json` per transfer holds what the offer said (layout, name, version) and
which command asked for it; the chunks already on disk are in `ota.transfer`'s `.chunks` map.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ota.atomic import write_atomic

log = logging.getLogger(__name__)

_SUFFIX = ".offer.json"


class PendingOffer(BaseModel):
    """A bundle offer the agent accepted and has not finished installing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(gt=0)]
    chunk_size: Annotated[int, Field(gt=0)]
    chunks: Annotated[int, Field(gt=0)]
    cmd_id: str
    name: str
    version: int
    url: str | None = Field(None, description="set when the bundle comes by HTTP range requests")
    chunk_digests: tuple[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")], ...] = Field(
        (), description="the offer's per-chunk sha256 list, kept so a resumed transfer checks too"
    )


def pending_path(directory: Path, digest: str) -> Path:
    return directory / f"{digest}{_SUFFIX}"


def save_pending(directory: Path, offer: PendingOffer) -> None:
    """Record `offer` durably. Raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(pending_path(directory, offer.digest), offer.model_dump_json().encode(), 0o600)


def load_pending(directory: Path) -> list[PendingOffer]:
    """Every recorded offer; unreadable records are removed (their chunks are re-fetched on
    the next offer). Raises OSError for an unreadable folder."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob(f"*{_SUFFIX}")):
        try:
            offer = PendingOffer.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            log.warning("event=pending_offer_unreadable path=%s error=%r", path, str(exc)[:200])
            path.unlink(missing_ok=True)
            continue
        if path.name != f"{offer.digest}{_SUFFIX}":
            path.unlink(missing_ok=True)
            continue
        found.append(offer)
    return found


def drop_pending(directory: Path, digest: str) -> None:
    """Forget the offer for `digest` (finished, failed or given up). Raises OSError."""
    pending_path(directory, digest).unlink(missing_ok=True)
