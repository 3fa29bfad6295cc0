"""Throttle: a sliding window of login attempts per key (a username, a client address).

An attempt is counted *before* the password is checked, so a burst of concurrent
guesses cannot all slip in ahead of the first failure; a successful attempt is then
taken back (``release``). Kept in memory: a restart forgets it, which costs an
attacker a restart they cannot cause.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from olbproxy.cache import Bounded
from olbproxy.errors import TooManyRequests


class Throttle:
    """At most ``limit`` attempts per key within ``window`` seconds."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        what: str = "login attempts",
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self.what = what
        self.clock = clock
        self.max_keys = max_keys
        self._attempts: Bounded[str, deque[float]] = Bounded(max_keys)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        stamps = self._attempts.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            self._attempts.pop(key)
            return None
        return stamps

    def check(self, key: str) -> None:
        """Raise ``TooManyRequests`` (with Retry-After) if ``key`` has no attempt left."""
        now = self.clock()
        stamps = self._recent(key, now)
        if stamps is not None and len(stamps) >= self.limit:
            wait = stamps[0] + self.window - now
            raise TooManyRequests(
                f"too many {self.what}; try again in {max(1, round(wait))} seconds",
                retry_after=wait,
            )

    def record(self, key: str) -> float:
        """Count one attempt; returns its stamp for ``release``."""
        now = self.clock()
        stamps = self._recent(key, now)
        if stamps is None:
            # Under a flood of distinct keys the least recently tried are forgotten.
            stamps = deque()
            self._attempts.put(key, stamps)
        stamps.append(now)
        return now

    def release(self, key: str, stamp: float) -> None:
        """Take back an attempt that succeeded."""
        stamps = self._attempts.get(key)
        if stamps is not None and stamp in stamps:
            stamps.remove(stamp)
            if not stamps:
                self._attempts.pop(key)
