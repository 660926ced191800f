"""The agent's answer to a trust-update command: step its root document forward, or say why not.

This is the one way the running agent writes its trust store: `apply_trust_update` on the
control thread, through `ota.trust_file.apply_root_chain`, which accepts only a chain of roots
each signed by the threshold of the one before and replaces the file atomically (the offline
`edgefleet-agent trust` command is the other, for the device's owner). Nothing that parses
camera streams can reach it: grabber threads get only an opened capture, the trust path is not
a settable setting, and a remote `set-config` cannot name a GStreamer pipeline or template (a
`filesink` could otherwise write any file the agent can), see `agent.config_overlay`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ota.errors import RootRefused
from protocol.messages import TrustUpdate

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def apply_trust_update(
    trust_file: Path, command: TrustUpdate, clock: Callable[[], datetime] = _utc_now
) -> tuple[bool, str, str]:
    """(ok, result, detail) for the ack: result is `trusted` or the refusal's reason code.

    Never raises for a bad document or an unwritable file; both become a refusal."""
    from ota.trust_file import apply_root_chain  # with the first trust update, not at start

    documents = [text.encode("utf-8") for text in command.roots]
    try:
        version = apply_root_chain(trust_file, documents, clock())
    except RootRefused as exc:
        log.warning("event=trust_update_refused reason=%s detail=%r", exc.reason.value, exc.detail)
        return False, exc.reason.value, exc.detail
    except OSError as exc:
        log.error("event=trust_update_failed file=%s error=%r", trust_file, str(exc))
        return False, "trust_file_unwritable", str(exc)
    log.info("event=trust_updated root_version=%d", version)
    return True, "trusted", f"root version {version}"
