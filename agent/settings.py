"""Agent settings: a YAML file, overridden by EDGEFLEET_AGENT_* environment variables.

A small loader over plain pydantic rather than pydantic-settings, which would cost an idle
agent several megabytes: `EDGEFLEET_AGENT_<FIELD>` (any case) sets a field, `__` reaches into
nested ones (`EDGEFLEET_AGENT_MQTT__HOST`), lists, mappings and models are JSON, and what the
environment sets is merged over the file's values key by key. `tags` also reads a plain
comma-separated list, from `EDGEFLEET_AGENT_TAGS` or `EDGEFLEET_TAGS`.
"""

from __future__ import annotations

import json
import os
import socket
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.link.identity import EnrollmentSettings
from agent.link.outbox import OutboxSettings
from agent.link.session import BrokerSettings
from agent.pipeline.settings import CameraSettings
from agent.pipeline.snapshots import SnapshotSettings
from device_profiles.schema import HealthSource, RuntimeWorker
from protocol.events import RuntimeKey
from protocol.messages import Ident
from protocol.topics import validate_device_id

ENV_PREFIX = "EDGEFLEET_AGENT_"
ENV_NESTED_DELIMITER = "__"
# the tags a device declares, also under this shorter name (the prefixed one wins)
TAGS_ENV = "EDGEFLEET_TAGS"
MAX_TAGS = 32  # what a State message carries


def _default_device_id() -> str:
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower()).strip("-")
    return (host or "device")[:64].rjust(3, "0")


class AgentSettings(BaseModel):
    """Everything an agent needs to know; each field has a default that works on one machine.

    Made with keyword arguments, the environment wins over them (see the module's docstring);
    `model_validate` and `model_copy` take their input as it is."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**_deep_update(values, environment_values(os.environ)))

    device_id: str = Field(default_factory=_default_device_id, description="[a-z0-9-]{3,64}")
    tags: Annotated[list[Ident], Field(max_length=MAX_TAGS)] = Field(
        default_factory=list,
        description="identifiers this device declares of itself (site, role, ...), sent in its "
        "state; operators add their own on the controller",
    )
    data_dir: Path = Field(Path(".edgefleet/agent"), description="bundles, downloads, state")
    trust_path: Path | None = Field(
        None, description="release-key trust store (JSON); default data_dir/trust.json"
    )
    profile: str | None = Field(None, description="force a device profile instead of probing")
    runtime_workers: dict[RuntimeKey, RuntimeWorker] = Field(
        default_factory=dict,
        description="runtimes run in a worker process under another interpreter; added to, and "
        "winning over, the device profile's `workers` (local settings only: names a program)",
    )
    mqtt: BrokerSettings = Field(default_factory=BrokerSettings)
    enrollment: EnrollmentSettings = Field(
        default_factory=EnrollmentSettings,
        description="get this device's broker certificate from the controller on start",
    )
    cameras: list[CameraSettings] = Field(default_factory=list, description="video sources")
    runtime_threads: Annotated[int, Field(ge=1, le=64)] = Field(2, description="CPU threads")
    health_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(10.0, description="health")
    health_sources: list[HealthSource] | None = Field(
        None, description="device health sources to read; None: the device profile's list"
    )
    health_timeout_s: Annotated[float, Field(gt=0, le=30)] = Field(
        2.0, description="longest one health source may take before it is reported unavailable"
    )
    det_flush_s: Annotated[float, Field(gt=0, le=60)] = Field(
        0.5, description="longest a detection waits before its batch is published"
    )
    det_batch_max: Annotated[int, Field(ge=1, le=1000)] = Field(100, description="per batch")
    snapshots: SnapshotSettings = Field(
        default_factory=SnapshotSettings, description="best frames kept for snapshot requests"
    )
    chunk_request_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        5.0, description="ask again for missing chunks after this long without progress"
    )
    chunk_request_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        8, description="requests for missing chunks without progress before a download fails"
    )
    probation_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        30.0, description="a new bundle must run healthy this long before it is committed"
    )
    max_probation_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="agent starts on a bundle still on probation before it is reverted"
    )
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="outbox")
    controller_origin: str | None = Field(
        None,
        pattern=r"^https?://[A-Za-z0-9.:\[\]-]+/?$",
        description="scheme://host[:port] of the controller's API: bundle downloads and snapshot "
        "uploads go nowhere else; None: the broker's host, any port",
    )
    ca_file: Path | None = Field(
        None, description="fleet CA (PEM) that https servers must chain to; None: system CAs"
    )
    allowed_file_roots: list[Path] = Field(
        default_factory=list,
        description="folders whose video files set-config may name as a camera source",
    )
    max_cameras: Annotated[int, Field(ge=1, le=64)] = Field(
        8, description="most cameras a set-config may configure"
    )
    max_bundle_bytes: Annotated[int, Field(gt=0)] = Field(
        2 << 30, description="largest bundle an offer may announce"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        return validate_device_id(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> object:
        if isinstance(value, str):  # "a, b,c" from the environment or a YAML scalar
            value = split_tags(value)
        if isinstance(value, list | tuple):
            # the same tag twice says nothing more; the first place is kept
            return list(dict.fromkeys(value)) if all(isinstance(v, str) for v in value) else value
        return value

    @property
    def trust_file(self) -> Path:
        return self.trust_path or self.data_dir / "trust.json"

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> AgentSettings:
        """Read a YAML file (if given); environment variables win over it."""
        data: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(path.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: settings must be a mapping")
            data.update(loaded)
        data.update(overrides)
        return cls(**data)


def split_tags(text: str) -> list[str]:
    """Tags from `a, b,c` (blanks and empty items dropped) or from a JSON list."""
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"tags: not a JSON list ({exc})") from None
        return loaded if isinstance(loaded, list) else [text]
    return [part.strip() for part in text.split(",") if part.strip()]


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings `environ` gives (EDGEFLEET_AGENT_*, case-insensitive); raises ValueError
    naming the variable whose JSON does not parse."""
    env = {key.upper(): value for key, value in environ.items()}
    values: dict[str, Any] = {}
    tags = env.get(ENV_PREFIX + "TAGS", env.get(TAGS_ENV))
    if tags is not None:
        values["tags"] = split_tags(tags)
    for name, field in AgentSettings.model_fields.items():
        if name == "tags":
            continue
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = _decode(key, field.annotation, env[key])
        nested: dict[str, Any] = {}
        for var, text in env.items():
            if var.startswith(key + ENV_NESTED_DELIMITER):
                path = var[len(key) + len(ENV_NESTED_DELIMITER) :].split(ENV_NESTED_DELIMITER)
                _put(nested, [p.lower() for p in path], field.annotation, var, text)
        if nested:
            whole = values.get(name)
            values[name] = _deep_update(whole, nested) if isinstance(whole, dict) else nested
    return values


def _put(tree: dict[str, Any], path: list[str], annotation: Any, var: str, text: str) -> None:
    """Set `text` (decoded for the field it lands on) at `path` inside `tree`."""
    *parents, last = path
    for key in parents:
        annotation = _member(annotation, key)
        child = tree.setdefault(key, {})
        if not isinstance(child, dict):
            return  # a value already stands here; a deeper one cannot be laid over it
        tree = child
    target = _member(annotation, last)
    # an unknown member is kept as text, so validation names it
    tree[last] = text if target is None else _decode(var, target, text)


def _member(annotation: Any, key: str) -> Any:
    """The type of `key` inside a model or a mapping annotated `annotation`; None: unknown."""
    for arm in _arms(annotation):
        if isinstance(arm, type) and issubclass(arm, BaseModel):
            field = arm.model_fields.get(key)
            if field is not None:
                return field.annotation
        elif get_origin(arm) in (dict, Mapping):
            return get_args(arm)[1]
    return None


def _arms(annotation: Any) -> list[Any]:
    """`annotation` without Annotated and None, split into its union's members."""
    if get_origin(annotation) is Annotated:
        return _arms(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for arm in get_args(annotation) for a in _arms(arm)]
    return [] if annotation is type(None) else [annotation]


def _is_complex(arm: Any) -> bool:
    if isinstance(arm, type) and issubclass(arm, BaseModel):
        return True
    return get_origin(arm) in (list, tuple, set, frozenset, dict, Mapping) or arm in (list, dict)


def _decode(var: str, annotation: Any, text: str) -> Any:
    """JSON for lists, mappings and models, the text itself for anything else."""
    arms = _arms(annotation)
    if not any(_is_complex(arm) for arm in arms):
        return text
    try:
        return json.loads(text)
    except ValueError:
        # a union with a plain member takes the text as it is
        if not all(_is_complex(arm) for arm in arms):
            return text
        raise ValueError(f"{var}: not valid JSON for a list, mapping or model") from None


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` laid over it; mappings on both sides merge key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged
