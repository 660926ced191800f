"""The bundle manifest: what a signed bundle promises about its model and files."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ota.canonical import canonical_json
from protocol.events import RuntimeKey

MANIFEST_SCHEMA_VERSION: Literal[1] = 1

Precision = Literal["fp32", "fp16", "int8", "uint8"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# a real manifest nests about six levels; parsers recurse per level, so depth is bounded
MAX_MANIFEST_DEPTH = 32
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")


def check_nesting(raw: bytes, limit: int = MAX_MANIFEST_DEPTH) -> None:
    """Refuse a JSON document nested deeper than `limit`, without parsing it.

    Raises ValueError. Brackets inside strings do not count; the document's other faults are
    left to the parser."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            if depth > limit:
                raise ValueError(f"nested deeper than {limit} levels")
        elif byte in _CLOSE:
            depth -= 1


class _ManifestPart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_ManifestPart):
    """How a frame becomes the model's input tensor."""

    width: Annotated[int, Field(gt=0, le=8192)]
    height: Annotated[int, Field(gt=0, le=8192)]
    layout: Literal["nhwc", "nchw"] = "nhwc"
    color: Literal["rgb", "bgr"] = "rgb"
    dtype: Literal["float32", "uint8", "int8"] = "float32"
    # value = (pixel - mean) / std per channel, applied for float inputs
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    letterbox: bool = True


class PostprocessSpec(_ManifestPart):
    """Which decoder turns raw outputs into boxes, and its parameters."""

    kind: Literal["blazeface", "centerface", "ssd", "yolo"]
    score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    iou_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    max_detections: Annotated[int, Field(gt=0, le=1000)] = 100
    params: dict[str, Any] = Field(default_factory=dict)


class FileEntry(_ManifestPart):
    """One file in the bundle, with the digest and size it must have."""

    path: str
    sha256: str
    size: Annotated[int, Field(ge=0)]

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256_RE.match(value):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        return value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        parts = value.split("/")
        if (
            not value
            or value.startswith("/")
            or "\\" in value
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise ValueError(f"unsafe file path {value!r}")
        return value


class Variant(_ManifestPart):
    """One build of the model for one runtime and precision."""

    # the enum's values are the strings signed manifests carry, so the signed bytes are unchanged
    runtime: RuntimeKey
    precision: Precision = "fp32"
    model: str = Field(description="path of the main model file, one of `files`")
    files: tuple[FileEntry, ...]

    @model_validator(mode="after")
    def _model_is_listed(self) -> Variant:
        if not any(entry.path == self.model for entry in self.files):
            raise ValueError(f"model {self.model!r} is not one of the variant's files")
        return self


class Compatibility(_ManifestPart):
    profiles: tuple[str, ...] = Field(default=(), description="empty means any profile")
    min_agent_version: str = "0.0.0"


class Manifest(_ManifestPart):
    """The signed description of a bundle; parsed only after its signature verifies."""

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: str
    version: Annotated[int, Field(ge=1)]
    release: Annotated[int, Field(ge=0)] = Field(
        0,
        description="the fleet's anti-rollback counter, across bundle names: a device never "
        "installs or rolls back to a bundle whose release is below the highest it committed; "
        "raise it when older bundles must never run again. 0 (manifests from before the "
        "counter) runs only while nothing with a higher release was committed",
    )
    created: datetime
    expires: datetime
    task: Literal["detect"] = "detect"
    labels: tuple[str, ...]
    input: InputSpec
    postprocess: PostprocessSpec
    compatibility: Compatibility = Compatibility()
    variants: Annotated[tuple[Variant, ...], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("name must match [a-z0-9][a-z0-9._-]{0,63}")
        return value

    @field_validator("created", "expires")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # a naive time cannot be compared with the device clock without guessing a zone
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("times must carry a UTC offset")
        return value

    @model_validator(mode="after")
    def _consistent_files(self) -> Manifest:
        # variants may share a file, but must then agree on its digest and size
        seen: dict[str, FileEntry] = {}
        for variant in self.variants:
            for entry in variant.files:
                if seen.setdefault(entry.path, entry) != entry:
                    raise ValueError(f"file {entry.path!r} is listed with different digests")
        return self

    def all_files(self) -> dict[str, FileEntry]:
        """Every file any variant lists, by path (a path shared by variants appears once)."""
        out: dict[str, FileEntry] = {}
        for variant in self.variants:
            for entry in variant.files:
                out[entry.path] = entry
        return out

    def variant_for(self, runtime: str) -> Variant | None:
        return next((v for v in self.variants if v.runtime == runtime), None)

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.model_dump(mode="json"))
