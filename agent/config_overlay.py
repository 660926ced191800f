"""Settings changed at run time (the `set-config` command), kept in `data_dir/runtime.yaml`.

The overlay is a partial settings document. It is validated field by field against the
agent's own settings model, written atomically, and laid over the file and environment
settings at every start, so a change made by the controller survives restarts. Only fields the
running agent can apply at once are settable; those that decide how it reaches the fleet
(device id, data folder, broker, trust) never are: a typo there would cut the device off from
the command that could fix it.

Cameras from a remote document are held to what a command may safely choose: a V4L2 index or
`/dev/videoN`, an `rtsp(s)://` or `http(s)://` (MJPEG) URL, or a video file under one of the
`allowed_file_roots`; at most `max_cameras` of them. GStreamer pipeline strings, the device
profile's source template and its values come only from the local settings file: a pipeline
can write any file the agent can write (its trust store included), so a camera that names one
is accepted only when the local file already configures that camera exactly so.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from agent.pipeline.settings import CameraSettings
from agent.pipeline.sources import source_kind
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

OVERLAY_FILE = "runtime.yaml"
# applied live by the daemon; camera filters and zones travel inside `cameras`
SETTABLE_FIELDS = frozenset(
    {"cameras", "health_interval_s", "det_flush_s", "det_batch_max", "log_level", "health_sources"}
)


# the ack's result when set-config is refused
ConfigProblem = Literal[
    "not_settable",
    "invalid_config",
    "overlay_unreadable",
    "persist_failed",
    # camera limits for remote documents
    "too_many_cameras",
    "pipeline_refused",
    "source_refused",
    "file_outside_roots",
]

_V4L2_SOURCE = re.compile(r"^(\d{1,3}|/dev/video\d{1,3})$")
_URL_SOURCE = re.compile(r"^(rtsps?|https?)://[^\s!\x00-\x1f]{1,2040}$", re.IGNORECASE)


class ConfigRejected(Exception):
    """A set-config document or overlay file was refused; `reason` is a short word."""

    def __init__(self, reason: ConfigProblem, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@functools.cache
def _patch_model() -> type[BaseModel]:
    """The settable fields as a model of their own; built on the first overlay or set-config,
    so an agent that is never reconfigured does not carry it."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in AgentSettings.model_fields.items()
        if name in SETTABLE_FIELDS
    }
    return create_model("RuntimePatch", __config__=ConfigDict(extra="forbid"), **fields)


def settable_fields() -> frozenset[str]:
    """Names of the settings `set-config` may change."""
    return SETTABLE_FIELDS & frozenset(AgentSettings.model_fields)


def validate_patch(patch: dict[str, Any]) -> dict[str, Any]:
    """The patch's fields as validated values; raises ConfigRejected naming every problem."""
    fixed = sorted(set(patch) - settable_fields())
    if fixed:
        raise ConfigRejected(
            "not_settable",
            f"cannot be set at run time: {', '.join(map(str, fixed))}; "
            f"settable: {', '.join(sorted(settable_fields()))}",
        )
    try:
        model = _patch_model().model_validate(patch)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise ConfigRejected("invalid_config", problems) from None
    values = {name: getattr(model, name) for name in model.model_fields_set}
    cameras = values.get("cameras") or []
    ids = [c.id for c in cameras]
    if len(ids) != len(set(ids)):
        raise ConfigRejected("invalid_config", f"camera ids must be unique: {ids}")
    return values


def load_overlay(data_dir: Path) -> dict[str, Any]:
    """The overlay document saved in `data_dir` ({} when none); raises ConfigRejected."""
    path = data_dir / OVERLAY_FILE
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigRejected("overlay_unreadable", f"{path}: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigRejected("overlay_unreadable", f"{path}: not a mapping")
    return loaded


def save_overlay(data_dir: Path, overlay: dict[str, Any]) -> None:
    """Write the overlay atomically (temp file, fsync, rename); raises ConfigRejected."""
    data_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(overlay, sort_keys=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".runtime-", suffix=".yaml")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, data_dir / OVERLAY_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigRejected("persist_failed", f"cannot write {OVERLAY_FILE}: {exc}") from None


def apply_overlay(settings: AgentSettings, overlay: dict[str, Any]) -> AgentSettings:
    """`settings` with the overlay's fields replaced; raises ConfigRejected on a bad overlay,
    including cameras that `settings` (the local file) does not allow a remote document."""
    if not overlay:
        return settings  # nothing saved: the common start
    values = validate_patch(overlay)
    if "cameras" in values:
        check_remote_cameras(values["cameras"], settings)
    return settings.model_copy(update=values)


def check_remote_cameras(cameras: list[CameraSettings], local: AgentSettings) -> None:
    """Refuse cameras a remote document may not set (see the module's docstring).

    Raises ConfigRejected with the first camera's problem."""
    if len(cameras) > local.max_cameras:
        raise ConfigRejected(
            "too_many_cameras", f"{len(cameras)} cameras, at most {local.max_cameras}"
        )
    # what the local settings configure is allowed as it is, pipelines and templates included
    known = {(c.id, c.source, tuple(sorted(c.template.items()))) for c in local.cameras}
    for camera in cameras:
        if (camera.id, camera.source, tuple(sorted(camera.template.items()))) in known:
            continue
        _check_remote_source(camera, local.allowed_file_roots)


def _check_remote_source(camera: CameraSettings, roots: list[Path]) -> None:
    source = camera.source
    kind = source_kind(source)
    where = f"camera {camera.id}"
    if kind in ("gstreamer", "profile") or "!" in source or camera.template:
        raise ConfigRejected(
            "pipeline_refused",
            f"{where}: GStreamer pipelines and profile templates come only from the local "
            "settings file",
        )
    if kind == "v4l2":
        if not _V4L2_SOURCE.match(source):
            raise ConfigRejected("source_refused", f"{where}: V4L2 source must be N or /dev/videoN")
        return
    if kind in ("rtsp", "http"):
        if not _URL_SOURCE.match(source) or not urlsplit(source).hostname:
            raise ConfigRejected("source_refused", f"{where}: not a plain {kind} URL")
        return
    _check_file_source(where, source, roots)


def _check_file_source(where: str, source: str, roots: list[Path]) -> None:
    if not os.path.isabs(source) or "\x00" in source:
        raise ConfigRejected("source_refused", f"{where}: a file source must be an absolute path")
    # resolved, so neither `..` nor a link leads out of the allowed folders
    real = Path(os.path.realpath(source))
    for root in roots:
        if real.is_relative_to(os.path.realpath(root)):
            return
    allowed = ", ".join(str(r) for r in roots) or "none configured"
    raise ConfigRejected(
        "file_outside_roots", f"{where}: {source} is not under an allowed folder ({allowed})"
    )


def merge_patch(overlay: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The overlay after `patch` (top-level keys replace; `cameras` is the whole list), as
    plain data ready to save; raises ConfigRejected."""
    validate_patch(patch)
    merged = {**overlay, **patch}
    values = validate_patch(merged)
    dumped = _patch_model().model_validate(merged).model_dump(mode="json", exclude_unset=True)
    return {name: dumped[name] for name in values}


def settings_with_overlay(settings: AgentSettings) -> AgentSettings:
    """Settings with the saved overlay laid over them; a broken overlay is logged and left out,
    so the agent still starts and can be given a good one."""
    try:
        return apply_overlay(settings, load_overlay(settings.data_dir))
    except ConfigRejected as exc:
        log.error("event=runtime_overlay_ignored reason=%s detail=%r", exc.reason, str(exc))
        return settings
