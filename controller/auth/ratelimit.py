"""Login attempts limited per user name and per client address: failures in a sliding window,
kept in process in a bounded table (the oldest keys are forgotten first)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class FailureWindow:
    """Counts failures per key over `window_s`; at most `max_keys` keys are kept."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(key, now)
            if len(times) < self.limit:
                return 0.0
            return max(0.0, self.window_s - (now - times[0]))

    def fail(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent(key, now)
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            self._failures[key] = times
            self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)


class LoginLimiter:
    """Both limits a login passes: per user name and per client address."""

    def __init__(
        self,
        per_user: int = 5,
        per_client: int = 20,
        window_s: float = 300.0,
        max_keys: int = 10_000,
    ) -> None:
        self.users = FailureWindow(per_user, window_s, max_keys)
        self.clients = FailureWindow(per_client, window_s, max_keys)

    def retry_after(self, user: str, client: str) -> float:
        return max(self.users.retry_after(user), self.clients.retry_after(client))

    def failed(self, user: str, client: str) -> None:
        self.users.fail(user)
        self.clients.fail(client)

    def succeeded(self, user: str) -> None:
        self.users.clear(user)
