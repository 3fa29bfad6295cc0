"""Placements: where other proxies (and this one before a restart) placed each room's turns.

The recorder writes, with each room, where its latest turn ran and the key of that
turn's whole prompt (``Room.served``). This feed reads them back into the planner
(``Planner.remember``): at start everything from the last ``placement.horizon``
seconds, then every ``placement.refresh`` seconds what is new. "New" is what was recorded
after the newest placement read, or at most ``late`` seconds before the last read,
whichever is later: records reach MongoDB that long after their turn at most (waiting in
the relay while it is busy: ``store.defer``), and one later than that (replayed from a
spool after an outage) is read by the next proxy to start. So a restarted proxy,
or a second one sharing the database, sends the next turn of a conversation to the
instance that holds it. It runs beside the request path and never in it: a request
uses whatever has been read so far, and a database that does not answer only means
the feed tries again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from aiohttp import web

from olbproxy.errors import ProxyError
from olbproxy.placement import Planner
from olbproxy.settings import PlacementSettings
from olbproxy.store import Rooms, now

log = logging.getLogger("olbproxy.persistence.placements")

PAGE = 1000


class PlacementFeed:
    """Reads recorded placements into the planner (see the module docstring)."""

    def __init__(
        self,
        rooms: Rooms,
        planner: Planner,
        settings: PlacementSettings,
        *,
        instance: str | None = None,
        late: float = 60.0,
    ) -> None:
        self.rooms = rooms
        self.late = late
        # This process's own placements are in the planner already: reading them back
        # cost a page of documents decoded on the loop every refresh (a 5-10 ms stall
        # at 200 new conversations/s), for nothing.
        self.instance = instance
        self.planner = planner
        self.settings = settings
        self.since: datetime = now() - timedelta(seconds=settings.horizon)
        self.read = 0  # placements taken in so far
        self.loaded = asyncio.Event()  # the first load (from the horizon on) is done

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the feed runs as long as the app."""
        task = asyncio.create_task(self.run(), name="olbproxy-placement-feed")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        while True:
            try:
                await self.load()
                self.loaded.set()
            except ProxyError as exc:
                log.info(
                    "placements not read (%s); trying again in %gs", exc, self.settings.refresh
                )
            await asyncio.sleep(self.settings.refresh)

    async def load(self) -> int:
        """Read what is new since the last read; returns how many placements that was."""
        taken = 0
        started = now()
        while True:
            page = await self.rooms.placements(self.since, limit=PAGE, other_than=self.instance)
            pairs = []
            for _room, served in page:
                try:
                    pairs.append((bytes.fromhex(served.key), served.backend))
                except ValueError:
                    continue  # not a key of ours
            taken += self.planner.remember(pairs)
            latest = max((served.at for _, served in page), default=self.since)
            # From the newest moment seen on (equal moments are read again, harmlessly).
            if len(page) < PAGE or latest == self.since:
                # Caught up. From the newest of the others' placements alone, a proxy
                # recording by itself would start every refresh at the same old moment,
                # and the database would walk all of this proxy's own rooms of the
                # horizon to leave them out: 0.36 s of SecantusDB's CPU per refresh at
                # 15,000 rooms, and the bench's later scenarios had three times that.
                self.since = max(latest, started - timedelta(seconds=self.late))
                break
            self.since = latest
        self.read += taken
        return taken
