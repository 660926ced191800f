"""The best frame of each track, kept for a snapshot request (DESIGN §5, snapshots).

Per camera, the keeper holds one full frame per track: the frame on which the track had its
best score so far. It keeps raw frames, not JPEGs, and encodes only when a snapshot is asked
for. Measured on one Xeon core (OpenCV imencode, quality 85): a copy takes 0.03 ms at 640×480
and 0.47 ms at 1920×1080, an encode 0.97 ms and 7.6 ms (6.0 ms at quality 70), and a Pi's
cores are several times slower at both; most tracks are never asked for. The copy happens
only when a track's best score improves, which after a track's first frames is rare, and once
per frame: the tracks whose best frame it is share one copy.

Memory is bounded per camera by a byte budget and a count; tracks that ended are evicted
first (oldest first), then the live track whose best frame is oldest. An ended track's frame
is kept for `keep_s` after its end so a request that follows the end event still finds it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from agent.pipeline.tracker import Track

if TYPE_CHECKING:  # frames are numpy arrays, but numpy loads with the first camera
    import numpy as np


class SnapshotSettings(BaseModel):
    """How many best frames the agent keeps for snapshot requests."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="keep best frames so snapshots can be requested")
    max_per_camera: Annotated[int, Field(ge=1, le=1000)] = Field(
        16, description="most tracks per camera whose best frame is kept"
    )
    max_bytes_per_camera: Annotated[int, Field(ge=1 << 20, le=4 << 30)] = Field(
        48 << 20, description="most bytes of raw frames kept per camera"
    )
    keep_s: Annotated[float, Field(ge=0, le=86400)] = Field(
        300.0, description="seconds an ended track's best frame stays available"
    )
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = Field(
        85, description="JPEG quality of a snapshot (encoded on request)"
    )


@dataclass
class KeptFrame:
    """One track's best frame so far."""

    camera: str
    track_id: int
    score: float
    ts: float
    frame: np.ndarray
    ended_at: float | None = None


class SnapshotKeeper:
    """Best frames of the tracks of every camera; thread-safe (inference threads write, the
    control thread reads)."""

    def __init__(self, settings: SnapshotSettings | None = None) -> None:
        self.settings = settings or SnapshotSettings()
        self._lock = threading.Lock()
        # per camera, track id → kept frame, in order of last change (oldest first)
        self._cameras: dict[str, dict[int, KeptFrame]] = {}
        self.copies = 0  # frames copied to be kept

        self.evicted = 0

    def offer(
        self,
        camera: str,
        track_id: int,
        score: float,
        frame: np.ndarray,
        ts: float,
        *,
        copied: bool = False,
    ) -> bool:
        """Keep `frame` for the track if it beats the kept one's score; True when kept.
        `copied`: `frame` is already this keeper's own copy (shared by the tracks of one frame),
        not a buffer the caller reuses."""
        if not self.settings.enabled:
            return False
        with self._lock:
            kept = self._cameras.setdefault(camera, {})
            old = kept.get(track_id)
            # an ended entry offered again means the camera's tracker started over (restart)
            if old is not None and old.ended_at is None and score <= old.score:
                return False
        # the copy runs outside the lock; only this camera's inference thread offers for it
        entry = KeptFrame(camera, track_id, score, ts, frame if copied else frame.copy())
        with self._lock:
            kept = self._cameras.setdefault(camera, {})
            kept.pop(track_id, None)
            kept[track_id] = entry
            if not copied:
                self.copies += 1
            self._evict(kept, ts)
        return True

    def observe(self, camera: str, tracks: Iterable[Track], frame: np.ndarray, ts: float) -> None:
        """After a tracker update on `frame`: keep it for tracks whose best score it set."""
        tracks = list(tracks)
        best = [t for t in tracks if t.last_ts == ts and t.best_score == t.score]
        if best and self.settings.enabled:
            # one copy of the frame, however many of its tracks it is the best frame of
            own = frame.copy()
            with self._lock:
                self.copies += 1
            for track in best:
                self.offer(camera, track.track_id, track.best_score, own, ts, copied=True)
        self.live(camera, (t.track_id for t in tracks), ts)

    def live(self, camera: str, track_ids: Iterable[int], ts: float) -> None:
        """Mark the camera's kept tracks not among `track_ids` as ended at `ts`."""
        alive = set(track_ids)
        with self._lock:
            kept = self._cameras.get(camera, {})
            for entry in kept.values():
                if entry.ended_at is None and entry.track_id not in alive:
                    entry.ended_at = ts
            self._evict(kept, ts)

    def get(self, camera: str, track_id: int) -> KeptFrame | None:
        """The kept best frame of a track, or None if never seen, expired or evicted."""
        with self._lock:
            return self._cameras.get(camera, {}).get(track_id)

    def frames(self, camera: str) -> list[KeptFrame]:
        with self._lock:
            return list(self._cameras.get(camera, {}).values())

    def kept_bytes(self, camera: str) -> int:
        """Bytes of the camera's kept frames; a frame several tracks share counts once."""
        with self._lock:
            return _unique_bytes(self._cameras.get(camera, {}))

    def _evict(self, kept: dict[int, KeptFrame], now: float) -> None:
        s = self.settings
        for track_id in [
            t for t, e in kept.items() if e.ended_at is not None and now - e.ended_at > s.keep_s
        ]:
            del kept[track_id]
            self.evicted += 1
        while kept and (
            len(kept) > s.max_per_camera or _unique_bytes(kept) > s.max_bytes_per_camera
        ):
            ended = [t for t, e in kept.items() if e.ended_at is not None]
            # dicts keep insertion order, and an improved frame is re-inserted: first is oldest
            victim = ended[0] if ended else next(iter(kept))
            del kept[victim]
            self.evicted += 1


def _unique_bytes(kept: dict[int, KeptFrame]) -> int:
    """Bytes of the frames in `kept`, each distinct frame once (at most max_per_camera)."""
    return sum({id(e.frame): e.frame.nbytes for e in kept.values()}.values())
