"""The shape of a device profile: how a device kind is recognised and what it should run."""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.events import RuntimeKey

Arch = Literal["x86_64", "aarch64", "armv7l"]
HealthSource = Literal[
    "thermal_zones", "tegrastats", "vcgencmd_throttled", "edgetpu_temperature", "nvml"
]
CameraKind = Literal["usb", "csi", "picamera", "rtsp"]

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$")]
UsbId = Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{4}$")]
# Paths are relative to the probed filesystem root, so fixture trees and real devices read alike.
RelativePath = Annotated[str, Field(min_length=1, pattern=r"^[^/]")]


class ProfileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(ProfileModel):
    """Facts that recognise a device kind; every given criterion must hold."""

    device_tree_model_contains: list[str] = Field(
        default_factory=list,
        description="Any of these substrings in the device-tree model string.",
    )
    files_exist: list[RelativePath] = Field(
        default_factory=list, description="All of these files exist under the root."
    )
    usb_ids: list[UsbId] = Field(
        default_factory=list, description="Any of these USB vendor:product ids is attached."
    )
    device_nodes: list[RelativePath] = Field(
        default_factory=list, description="All of these device nodes exist under the root."
    )
    arch: list[Arch] = Field(default_factory=list, description="The machine is one of these.")
    nvidia_driver: bool | None = Field(
        default=None, description="The NVIDIA kernel driver is (or is not) loaded."
    )

    def is_empty(self) -> bool:
        return not (
            self.device_tree_model_contains
            or self.files_exist
            or self.usb_ids
            or self.device_nodes
            or self.arch
            or self.nvidia_driver is not None
        )


class Accelerator(ProfileModel):
    kind: Literal["gpu", "tpu", "vpu", "npu"]
    name: str = Field(min_length=1)
    usb_id: UsbId | None = None
    device_node: RelativePath | None = None


AbsolutePath = Annotated[str, Field(min_length=2, pattern=r"^/")]


class RuntimeWorker(ProfileModel):
    """How a runtime runs in a worker process under the device's own Python (JetPack 4.6's
    3.6 with its system TensorRT, Mendel's 3.7 with Coral's pycoral, an OpenVINO 2022.3
    environment), when the vendor package does not exist for the agent's interpreter."""

    python: AbsolutePath = Field(description="the interpreter that runs the worker")
    python_path: list[AbsolutePath] = Field(
        default_factory=list, description="folders put before the worker's import path"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="environment for the worker (e.g. LD_LIBRARY_PATH)"
    )
    python_version: str = Field(
        pattern=r"^3\.\d+$", description="the interpreter's version as the device ships it"
    )
    note: str | None = None


class RuntimePreference(ProfileModel):
    runtime: RuntimeKey
    precision: Literal["fp32", "fp16", "int8"]
    device: str | None = Field(default=None, description='e.g. "CUDA", "MYRIAD", "CPU"')
    note: str | None = None


# Placeholders a camera source template may use; the agent fills them from its camera settings.
CAMERA_PLACEHOLDERS = frozenset({"sensor_id", "index", "width", "height", "fps", "url"})


class Camera(ProfileModel):
    kind: CameraKind
    source_template: str = Field(
        min_length=1,
        description="OpenCV source or GStreamer pipeline with {width}-style placeholders.",
    )

    @model_validator(mode="after")
    def _known_placeholders(self) -> Camera:
        unknown = self.placeholders() - CAMERA_PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholders in source_template: {sorted(unknown)}")
        return self

    def placeholders(self) -> frozenset[str]:
        """The {names} used in the template; raises ValueError on a malformed template."""
        fields = string.Formatter().parse(self.source_template)
        return frozenset(name for _, name, _, _ in fields if name is not None)

    def source(self, **values: object) -> str:
        """The template filled in; raises KeyError when a placeholder has no value."""
        return self.source_template.format(**values)


class DeviceProfile(ProfileModel):
    """One device kind: recognition rules, accelerators, runtimes by preference, camera, health."""

    name: Slug
    description: str = Field(min_length=1)
    match: Match
    priority: int = Field(description="More specific profiles win when several match.")
    accelerators: list[Accelerator] = Field(default_factory=list)
    runtimes: list[RuntimePreference] = Field(min_length=1)
    camera: Camera
    health: list[HealthSource] = Field(default_factory=list)
    workers: dict[RuntimeKey, RuntimeWorker] = Field(
        default_factory=dict,
        description="runtimes that run in a worker process under another interpreter",
    )
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_match_and_unique_runtimes(self) -> DeviceProfile:
        if self.match.is_empty():
            raise ValueError("match must name at least one criterion")
        seen = set()
        for pref in self.runtimes:
            key = (pref.runtime, pref.precision, pref.device)
            if key in seen:
                raise ValueError(f"runtime listed twice: {key}")
            seen.add(key)
        return self

    @property
    def usb_accelerator(self) -> bool:
        """True when the profile is an add-on USB accelerator that rides on any host."""
        return bool(self.match.usb_ids)
