"""What one camera is configured with: its source, how to read it, and its pipeline stages."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.pipeline.filters import FilterSettings
from agent.pipeline.motion import MotionSettings
from agent.pipeline.tracker import TrackerSettings


class CameraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = Field(
        "cam0", description="camera name in detections and health"
    )
    source: str = Field(
        min_length=1,
        description="video file, V4L2 index or /dev/videoN, rtsp:// or http(s):// (MJPEG) URL, "
        "GStreamer pipeline (contains '!'), or 'profile' for the device profile's camera",
    )
    loop: bool = Field(True, description="restart a video file at its end")
    realtime: bool = Field(True, description="pace a video file at its own frame rate")
    fps: Annotated[float, Field(gt=0, le=240)] | None = Field(
        None, description="pacing rate for a file when it does not say its own"
    )
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP media transport")
    open_timeout_s: Annotated[float, Field(gt=0, le=120)] = Field(
        10.0, description="give up opening a network source after this long"
    )
    read_timeout_s: Annotated[float, Field(gt=0, le=120)] = Field(
        5.0, description="no frame for this long: the source is frozen and gets reopened"
    )
    reconnect_max_s: Annotated[float, Field(ge=0.1, le=600)] = Field(
        30.0, description="cap of the exponential backoff between reopen attempts"
    )
    template: dict[str, int | str] = Field(
        default_factory=dict,
        description="values for the profile's source template: sensor_id, index, width, "
        "height, fps, url",
    )
    filters: FilterSettings = Field(
        default_factory=FilterSettings, description="labels, score, area, zones"
    )
    motion: MotionSettings = Field(default_factory=MotionSettings, description="motion gating")
    tracker: TrackerSettings = Field(default_factory=TrackerSettings, description="tracking")
