"""Motion gating: skip inference while a camera's scene stands still.

Cheap frame differencing on a small grey copy of the frame: when fewer than `min_changed`
of its pixels moved by more than `pixel_delta` since the last frame that was inferred, the
frame is skipped. A frame is still inferred every `max_idle_s`, so objects that stand still
stay tracked and ones that vanish without motion (a light switched off) end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # OpenCV and numpy load with the first camera, not with the settings
    import numpy as np


class MotionSettings(BaseModel):
    """Whether and how a camera skips inference on still scenes."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="skip inference on frames without motion")
    width: Annotated[int, Field(ge=16, le=640)] = Field(
        96, description="width of the grey copy the difference is taken on"
    )
    pixel_delta: Annotated[int, Field(ge=1, le=255)] = Field(
        20, description="grey-level change that counts a pixel as moved"
    )
    min_changed: Annotated[float, Field(gt=0, le=1)] = Field(
        0.005, description="fraction of moved pixels that counts as motion"
    )
    max_idle_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        5.0, description="infer at least this often even without motion"
    )


class MotionGate:
    """Decides per frame whether inference is needed; one per camera, one thread."""

    def __init__(self, settings: MotionSettings | None = None) -> None:
        self.settings = settings or MotionSettings()
        self._reference: np.ndarray | None = None
        self._inferred_at = 0.0

    def _small_grey(self, frame_bgr: np.ndarray) -> np.ndarray:
        import cv2

        h, w = frame_bgr.shape[:2]
        width = min(self.settings.width, w)
        height = max(1, round(h * width / w))
        small = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        # a light blur keeps sensor noise and JPEG ringing from reading as motion
        return cv2.GaussianBlur(grey, (3, 3), 0)

    def needs_inference(self, frame_bgr: np.ndarray, now: float) -> bool:
        """True when the frame should be inferred (motion, first frame, or idle too long)."""
        if not self.settings.enabled:
            return True
        import cv2
        import numpy as np

        grey = self._small_grey(frame_bgr)
        ref = self._reference
        if (
            ref is None
            or ref.shape != grey.shape
            or now - self._inferred_at >= self.settings.max_idle_s
        ):
            due = True
        else:
            moved = cv2.absdiff(grey, ref) > self.settings.pixel_delta
            due = float(np.count_nonzero(moved)) >= self.settings.min_changed * moved.size
        if due:
            # compare against the last inferred frame, so slow drifts add up to motion
            self._reference = grey
            self._inferred_at = now
        return due
