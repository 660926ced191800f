"""Waiting, bounded in time, for a condition that can only be polled (an HTTP answer, a counter).

The demo and the tests wait with this one loop; where an event can be awaited instead (an MQTT
message, a condition variable), await it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


class WaitTimedOut(TimeoutError):
    """A polled condition did not hold in time; the message says what was awaited."""


def wait_until(
    what: str,
    check: Callable[[], T | Literal[False] | None],
    timeout: float = 30.0,
    interval: float = 0.2,
) -> T:
    """Call `check` every `interval` seconds until it returns something truthy; return that.

    `check` runs at least once; None and False mean "not yet", so the value returned is typed
    without them. Raises WaitTimedOut after `timeout` seconds; whatever `check` raises
    propagates at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimedOut(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(interval, remaining))
