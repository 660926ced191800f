"""Send new root documents to every device as a trust-update command.

The chain is checked here first, exactly as a device will check it, so an operator learns of a
bad root from the API's answer rather than from a fleet of refusals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from controller.db import Device
from controller.mqtt.commands import CommandSender
from ota.errors import RootRefused
from ota.root import is_root_document, parse_root, update_root
from ota.trust_file import apply_root_chain
from protocol.events import RefusalReason
from protocol.messages import TrustUpdate

log = logging.getLogger(__name__)

MAX_ROOTS = 3


class TrustPushIn(BaseModel):
    """A chain of root documents, oldest first, each as its JSON text."""

    model_config = ConfigDict(extra="forbid")

    roots: list[str] = Field(min_length=1, max_length=MAX_ROOTS)


@dataclass(frozen=True)
class PushedRoots:
    """What a push sent: the root version the chain ends on, and one command per device."""

    root_version: int
    commands: dict[str, str]  # device id -> trust-update command id


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


def push_roots(
    sessions: sessionmaker[Session],
    commands: CommandSender,
    body: bytes,
    trust_path: Path | None,
) -> PushedRoots:
    """Check the chain in `body`, then send it to every registered device.

    Raises RootRefused, OSError, controller.mqtt.session.PublishError."""
    documents = parse_push_body(body)
    version = check_chain(documents, trust_path, datetime.now(timezone.utc))
    roots = tuple(data.decode("utf-8") for data in documents)
    with sessions() as session:
        devices = list(session.scalars(select(Device.id).order_by(Device.id)))
    sent: dict[str, str] = {}
    for device_id in devices:
        command = TrustUpdate(device=device_id, roots=roots)
        commands.send(command)
        sent[device_id] = command.id
    log.info("event=trust_pushed root_version=%d devices=%d", version, len(sent))
    return PushedRoots(root_version=version, commands=sent)
