"""Fault injection for crash tests: the agent SIGKILLs itself at a named point of an install.

`EDGEFLEET_AGENT_FAULT=stage[:count]` kills the process the `count`-th time (default 1) it
passes `stage`: `offer` (a deploy arrived, its offer not yet saved), `download` (a chunk
stored), `unpack` (a file of the bundle written into its slot), `switch` (slot complete,
pointer not yet moved), `probation` (pointer moved and model loaded, before commit). Unset, the
fault point is a function that does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

ENV_VAR = "EDGEFLEET_AGENT_FAULT"
STAGES = ("offer", "download", "unpack", "switch", "probation")

FaultPoint = Callable[[str], None]


class FaultSpecError(ValueError):
    """The fault variable names no known stage, or its count is not a positive integer."""


def no_fault(stage: str) -> None:
    """The fault point of an agent run without fault injection."""


class KillAt:
    """Kills this process with SIGKILL the `count`-th time `stage` is reached."""

    def __init__(self, stage: str, count: int = 1) -> None:
        if stage not in STAGES:
            raise FaultSpecError(f"unknown fault stage {stage!r}; known: {', '.join(STAGES)}")
        if count < 1:
            raise FaultSpecError(f"fault count must be at least 1, not {count}")
        self.stage = stage
        self.count = count
        self.seen = 0

    def __call__(self, stage: str) -> None:
        if stage != self.stage:
            return
        self.seen += 1
        if self.seen < self.count:
            return
        log.critical("event=fault_injected stage=%s count=%d", stage, self.seen)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # SIGKILL, not an exception: nothing may clean up, exactly as in a power cut
        os.kill(os.getpid(), signal.SIGKILL)


def fault_point_from_env(env: Mapping[str, str] | None = None) -> FaultPoint:
    """The fault point the environment asks for, or `no_fault`. Raises FaultSpecError."""
    spec = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    if not spec:
        return no_fault
    stage, _, count = spec.partition(":")
    try:
        times = int(count) if count else 1
    except ValueError as exc:
        raise FaultSpecError(f"{ENV_VAR}={spec!r}: count is not an integer") from exc
    log.warning("event=fault_armed stage=%s count=%d", stage, times)
    return KillAt(stage, times)
