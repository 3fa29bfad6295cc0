"""The watchdog: ends streams whose backend has gone silent for too long.

One task for the whole process compares, once per tick, a byte count each stream
keeps anyway (aiohttp's ``StreamReader.total_bytes``, or the splice's ``received``)
with the count it saw before. So the idle timeout costs nothing per chunk: no timer is
created, moved or cancelled while tokens flow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Watched:
    idle: float
    progress: Callable[[], int]
    stop: Callable[[], None]
    seen: int
    moved_at: float


class Watchdog:
    def __init__(self, tick: float = 1.0) -> None:
        self.tick = tick
        self._streams: dict[object, _Watched] = {}
        # Streams the watchdog ended, so the relay can say why the backend went away.
        self.timed_out: set[object] = set()

    def watch(
        self,
        key: object,
        idle: float | None,
        progress: Callable[[], int],
        stop: Callable[[], None],
    ) -> None:
        if idle is not None:
            self._streams[key] = _Watched(idle, progress, stop, progress(), time.monotonic())

    def forget(self, key: object) -> None:
        self._streams.pop(key, None)
        self.timed_out.discard(key)

    def check(self, now: float) -> None:
        for key, watched in list(self._streams.items()):
            seen = watched.progress()
            if seen != watched.seen:
                watched.seen, watched.moved_at = seen, now
            elif now - watched.moved_at >= watched.idle:
                self.timed_out.add(key)
                del self._streams[key]
                watched.stop()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.check(time.monotonic())
