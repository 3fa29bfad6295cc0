"""Pace: whether recording waits, so that a busy relay keeps its cores.

While the relay's process is busy (``BUSY`` of a core or more, looked at every ``PACE``
seconds), finished exchanges wait in the relay (handoff.py: in memory, beyond
``store.queue_size`` on disk), and the recording process and MongoDB leave the cores to
relaying. They go once the relay is calmer (below ``CALM``), or after ``store.defer``
seconds at the latest; recording then does not wait again for as long, so records of a
relay that stays busy still reach MongoDB. On the bench's two cores shared with a
MongoDB, recording as exchanges finished took 0.6-0.8 of a core from the relay at its
peak; at 200 new streams/s, where the relay used 0.17-0.26 of a core, it added about
1 ms to the TTFT p99, which waiting took away (README, item 28). The team's own load
(20 streams at once) is a few hundredths of a core: there, records never wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("olbproxy.persistence.pace")

PACE = 0.25  # seconds between looks at how busy the relay's process is
BUSY, CALM = 0.15, 0.075  # of a core: recording waits from BUSY on, until below CALM
TELL_EVERY = 60.0  # seconds between log lines saying that recording waits


def cpu_share() -> Callable[[], float]:
    """A function returning the cores this process used since its last call."""
    last = [time.process_time(), time.monotonic()]

    def share() -> float:
        cpu, wall = time.process_time(), time.monotonic()
        used = (cpu - last[0]) / max(wall - last[1], 1e-6)
        last[:] = cpu, wall
        return used

    return share


class Pace:
    """Looks at the relay's load; ``deferring`` says whether recording waits now."""

    def __init__(self, limit: float, share: Callable[[], float] | None = None) -> None:
        self.limit = limit  # store.defer: seconds at most; 0 never waits
        self.share = share or cpu_share()
        self.deferring = False
        self._since = 0.0
        self._not_before = 0.0
        self._told = -TELL_EVERY

    def look(self) -> bool:
        """One look; True when recording, having waited, may go now."""
        busy, now = self.share(), time.monotonic()
        if not self.deferring:
            if self.limit > 0 and busy >= BUSY and now >= self._not_before:
                self.deferring, self._since = True, now
                self._tell(busy, now)
            return False
        if busy < CALM or now - self._since >= self.limit:
            if busy >= CALM:  # waited long enough: record, busy or not, for as long
                self._not_before = now + self.limit
            self.deferring = False
            return True
        return False

    def _tell(self, busy: float, now: float) -> None:
        if now - self._told >= TELL_EVERY:
            self._told = now
            log.info(
                "persistence: the relay is busy (%.2f of a core); recording waits until "
                "it is calmer, %gs at most (store.defer)",
                busy,
                self.limit,
            )
