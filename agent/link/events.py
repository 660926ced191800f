"""Deployment and diagnostic events from the agent, on the device's `evt` topic.

Every event is a typed call: its kind, the deployment it belongs to, and, for a failure, a
reason that is a member of `protocol.events`. Events go to the outbox, so a broker outage
delays them and a restart does not lose them; a chunk request is the one exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from protocol.events import EventKind, EventLevel, Reason
from protocol.messages import ChunkRange, Event

log = logging.getLogger(__name__)

# the wire model's limits; a longer exception text is cut rather than refused
_MESSAGE_MAX = 4096
_REASON_MAX = 256


@dataclass(frozen=True)
class DeploymentRef:
    """Which deployment an event belongs to: the bundle's digest and the command that asked."""

    bundle: str | None = None
    cmd_id: str | None = None

    def with_bundle(self, digest: str) -> DeploymentRef:
        """The same command, for the bundle with `digest` (known once the file is verified)."""
        return DeploymentRef(digest, self.cmd_id)


NO_DEPLOYMENT = DeploymentRef()


class EventReporter:
    """Turns each report into an `Event` and hands it to the outbox (`store`), or, for a chunk
    request, straight to the session (`send_now`)."""

    def __init__(
        self,
        device_id: str,
        *,
        store: Callable[[Event], None],
        send_now: Callable[[Event], None],
    ) -> None:
        self.device_id = device_id
        self._store = store
        self._send_now = send_now

    def report(
        self,
        kind: EventKind,
        ref: DeploymentRef = NO_DEPLOYMENT,
        *,
        reason: Reason | None = None,
        level: EventLevel = EventLevel.INFO,
        message: str = "",
        progress: float | None = None,
        missing: tuple[ChunkRange, ...] = (),
    ) -> None:
        """Publish one event about `ref`. Raises what the outbox or session raises."""
        event = Event(
            device=self.device_id,
            kind=kind,
            level=level,
            bundle=ref.bundle,
            cmd_id=ref.cmd_id,
            reason=None if reason is None else str(reason)[:_REASON_MAX],
            message=message[:_MESSAGE_MAX],
            progress=progress,
            missing=missing,
        )
        log.info("event=%s bundle=%s reason=%s", kind, (event.bundle or "-")[:12], event.reason)
        if kind == EventKind.CHUNK_REQUEST:
            # worth only its moment: the deployer asks again for whatever is still missing, and
            # a request replayed from disk after a restart would make the controller resend
            # chunks this device may already hold
            self._send_now(event)
            return
        self._store(event)
