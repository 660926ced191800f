"""Send new root documents to every device as a trust-update command.

The chain is checked here first, exactly as a device will check it, so an operator learns of a
bad root from the API's answer rather than from a fleet of refusals.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from controller.db import Device
from controller.fleet.deployments import DeploymentService
from ota.errors import RefusalReason, RootRefused
from ota.root import is_root_document, parse_root, update_root
from ota.trust import apply_root_chain
from protocol.codec import encode
from protocol.messages import TrustUpdate

log = logging.getLogger(__name__)

MAX_ROOTS = 3


class TrustPushIn(BaseModel):
    """A chain of root documents, oldest first, each as its JSON text."""

    model_config = ConfigDict(extra="forbid")

    roots: list[str] = Field(min_length=1, max_length=MAX_ROOTS)


class TrustPushOut(BaseModel):
    root_version: int
    commands: dict[str, str] = Field(description="device id -> trust-update command id")


def parse_push_body(body: bytes) -> list[bytes]:
    """One root document, or {"roots": [...]} for a chain. Raises RootRefused (malformed_root)."""
    if is_root_document(body):
        return [body]
    try:
        return [text.encode("utf-8") for text in TrustPushIn.model_validate_json(body).roots]
    except ValidationError as exc:
        detail = 'the body is neither a root document nor {"roots": [...]}'
        raise RootRefused(RefusalReason.MALFORMED_ROOT, detail) from exc


def check_chain(documents: list[bytes], trust_path: Path | None, now: datetime) -> int:
    """The version the chain ends on; when `trust_path` holds a root, step it forward too, so
    the controller verifies uploads with the same keys its devices will.

    Raises RootRefused, OSError."""
    if trust_path is not None and is_root_document(trust_path.read_bytes()):
        return apply_root_chain(trust_path, documents, now)
    # no root of our own to start from: each document must at least follow the one before it
    current = parse_root(documents[0])
    for data in documents[1:]:
        current = update_root(current, data, now)
    return current.version


def push_roots(deployer: DeploymentService, body: bytes, trust_path: Path | None) -> TrustPushOut:
    """Check the chain in `body`, then send it to every registered device.

    Raises RootRefused, OSError, controller.mqtt_session.PublishError."""
    documents = parse_push_body(body)
    version = check_chain(documents, trust_path, datetime.now(timezone.utc))
    roots = tuple(data.decode("utf-8") for data in documents)
    with deployer.sessions() as session:
        devices = list(session.scalars(select(Device.id).order_by(Device.id)))
    commands: dict[str, str] = {}
    for device_id in devices:
        command = TrustUpdate(device=device_id, roots=roots)
        deployer.publisher.publish(deployer.topics.cmd(device_id), encode(command), timeout=10.0)
        commands[device_id] = command.id
    log.info("event=trust_pushed root_version=%d devices=%d", version, len(commands))
    return TrustPushOut(root_version=version, commands=commands)
