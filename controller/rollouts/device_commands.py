"""Operator commands to one device or a group: rollback, set-config, restart-pipeline.

Each goes through the CommandSender (signed, capped publisher); the agent's ack lands in the
events table under the command id returned here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy.orm import Session

from controller.db import Device
from controller.mqtt.commands import CommandSender
from controller.mqtt.session import PublishError
from controller.rollouts.inventory import UnknownDeviceRef, select_devices
from controller.rollouts.spec import Selector
from protocol.messages import Command, RestartPipeline, Rollback, SetConfig

log = logging.getLogger(__name__)


class DeviceAction(str, Enum):
    ROLLBACK = "rollback"
    SET_CONFIG = "set-config"
    RESTART_PIPELINE = "restart-pipeline"


@dataclass(frozen=True)
class SentCommand:
    device: str
    cmd_id: str | None
    error: str = ""


def _command(action: DeviceAction, device: str, config: dict[str, Any] | None) -> Command:
    if action is DeviceAction.ROLLBACK:
        return Rollback(device=device)
    if action is DeviceAction.RESTART_PIPELINE:
        return RestartPipeline(device=device)
    return SetConfig(device=device, config=config or {})


def check_config(action: DeviceAction, config: dict[str, Any] | None) -> None:
    """Raises ValueError (pydantic's) when set-config's document is not one the wire takes."""
    if action is DeviceAction.SET_CONFIG:
        SetConfig(device="check", config=config or {})


def targets_of(session: Session, device: str | None, group: str | None) -> list[str]:
    """The device itself (raises UnknownDeviceRef), or a group's members (raises UnknownGroup)."""
    if device is not None:
        if session.get(Device, device) is None:
            raise UnknownDeviceRef(f"no device {device!r}")
        return [device]
    return select_devices(session, Selector(group=group))


def send_action(
    commands: CommandSender,
    devices: list[str],
    action: DeviceAction,
    config: dict[str, Any] | None = None,
) -> list[SentCommand]:
    """Send `action` to each device; a device whose command could not be sent says why."""
    sent = []
    for device in devices:
        command = _command(action, device, config)
        try:
            commands.send(command)
        except PublishError as exc:
            sent.append(SentCommand(device, None, str(exc)))
            continue
        log.info(
            "event=device_command_sent device=%s action=%s cmd=%s", device, action.value, command.id
        )
        sent.append(SentCommand(device, command.id))
    return sent
