"""Per-camera IoU tracker: per-frame boxes in, track events out (start, update, end).

A detection that overlaps a live track of the same label continues it; one that overlaps
none opens a tentative track, which is confirmed (a `start` event) after `min_hits` frames.
A confirmed track reports `update` only when its box moves or grows materially or its score
improves a lot, at most once per `update_interval_s`; after `max_missed` processed frames
without a match it ends with its best score and box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

BoxT = tuple[float, float, float, float]
EventKind = Literal["start", "update", "end"]


class TrackerSettings(BaseModel):
    """How per-frame boxes become tracks."""

    model_config = ConfigDict(extra="forbid")

    iou_match: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.3, description="least IoU for a box to continue a track"
    )
    min_hits: Annotated[int, Field(ge=1, le=100)] = Field(
        2, description="frames a new object must be seen before its start event"
    )
    max_missed: Annotated[int, Field(ge=1, le=1000)] = Field(
        5, description="processed frames without the object before its end event"
    )
    move_iou: Annotated[float, Field(gt=0, le=1)] = Field(
        0.6, description="an update is due when the box's IoU with the last reported drops below"
    )
    score_gain: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="an update is due when the score beats the last reported by this much"
    )
    update_interval_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        1.0, description="least time between two updates of one track"
    )


@dataclass(frozen=True)
class Observation:
    """One detection on one frame, boxes normalised x1, y1, x2, y2."""

    label: str
    score: float
    box: BoxT


@dataclass(frozen=True)
class TrackEvent:
    """What the tracker reports: the track's state at this event, plus its best sighting."""

    kind: EventKind
    track_id: int
    label: str
    score: float
    box: BoxT
    ts: float
    best_score: float
    best_box: BoxT


@dataclass
class Track:
    track_id: int
    label: str
    box: BoxT
    score: float
    best_score: float
    best_box: BoxT
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    reported_box: BoxT = (0.0, 0.0, 0.0, 0.0)
    reported_score: float = 0.0
    reported_at: float = 0.0
    last_ts: float = 0.0

    def event(self, kind: EventKind, ts: float) -> TrackEvent:
        return TrackEvent(
            kind,
            self.track_id,
            self.label,
            self.score,
            self.box,
            ts,
            self.best_score,
            self.best_box,
        )


def iou(a: BoxT, b: BoxT) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class IouTracker:
    """Tracks of one camera; not thread-safe: one worker thread feeds it."""

    def __init__(self, settings: TrackerSettings | None = None, first_id: int = 1) -> None:
        self.settings = settings or TrackerSettings()
        self._tracks: list[Track] = []
        self._next_id = first_id

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    def update(self, found: Sequence[Observation], ts: float) -> list[TrackEvent]:
        """Feed one processed frame's detections; returns the events it causes."""
        s = self.settings
        events: list[TrackEvent] = []
        # greedy matching, best overlaps first: cheap and good enough for a few objects a frame
        pairs = sorted(
            (
                (iou(t.box, o.box), ti, oi)
                for ti, t in enumerate(self._tracks)
                for oi, o in enumerate(found)
                if t.label == o.label
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_o: set[int] = set()
        for overlap, ti, oi in pairs:
            if overlap < s.iou_match:
                break
            if ti in used_t or oi in used_o:
                continue
            used_t.add(ti)
            used_o.add(oi)
            self._continue(self._tracks[ti], found[oi], ts, events)
        for ti, track in enumerate(self._tracks):
            if ti not in used_t:
                track.missed += 1
        for oi, obs in enumerate(found):
            if oi not in used_o:
                self._open(obs, ts, events)
        alive: list[Track] = []
        for track in self._tracks:
            if track.missed < s.max_missed:
                alive.append(track)
            elif track.confirmed:
                events.append(track.event("end", ts))
        self._tracks = alive
        return events

    def flush(self, ts: float) -> list[TrackEvent]:
        """End every confirmed track now (camera stopping or model swapped)."""
        events = [t.event("end", ts) for t in self._tracks if t.confirmed]
        self._tracks = []
        return events

    def _open(self, obs: Observation, ts: float, events: list[TrackEvent]) -> None:
        track = Track(self._next_id, obs.label, obs.box, obs.score, obs.score, obs.box, last_ts=ts)
        self._next_id += 1
        self._tracks.append(track)
        self._maybe_confirm(track, ts, events)

    def _continue(
        self, track: Track, obs: Observation, ts: float, events: list[TrackEvent]
    ) -> None:
        track.box, track.score, track.last_ts = obs.box, obs.score, ts
        track.hits += 1
        track.missed = 0
        if obs.score > track.best_score:
            track.best_score, track.best_box = obs.score, obs.box
        if not track.confirmed:
            self._maybe_confirm(track, ts, events)
            return
        s = self.settings
        moved = iou(track.box, track.reported_box) < s.move_iou
        better = track.score >= track.reported_score + s.score_gain and s.score_gain > 0
        if (moved or better) and ts - track.reported_at >= s.update_interval_s:
            self._report(track, "update", ts, events)

    def _maybe_confirm(self, track: Track, ts: float, events: list[TrackEvent]) -> None:
        if track.hits >= self.settings.min_hits:
            track.confirmed = True
            self._report(track, "start", ts, events)

    @staticmethod
    def _report(track: Track, kind: EventKind, ts: float, events: list[TrackEvent]) -> None:
        track.reported_box, track.reported_score, track.reported_at = track.box, track.score, ts
        events.append(track.event(kind, ts))
