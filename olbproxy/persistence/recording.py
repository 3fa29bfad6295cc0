"""Recording: what the proxy asks of persistence, whichever side records.

The recorder on the relay's own loop (recorder.py: the memory store, or
``store.recorder: loop``) and the hand-off to a recording process (handoff.py, the
default with MongoDB) both answer it; the app, the rooms API, the metrics and the status
page see only this.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from olbproxy.exchange import Exchange
from olbproxy.persistence.filing import Filing
from olbproxy.supervisor import Supervisor


class Recording(Protocol):
    """What the proxy asks of persistence: the Recorder on the relay's loop, or the
    Handoff (handoff.py) to a recording process of its own."""

    filing: Filing  # room owners, for the rooms API's preflight
    spooling: bool  # the database is known to be behind: do not wait for it
    stats: Counter[str]

    def observe(self, exchange: Exchange) -> None: ...
    def forget(self, room_id: str) -> None: ...
    def backlog(self) -> dict[str, int]: ...
    @property
    def idle(self) -> bool: ...
    async def start(self, supervisor: Supervisor | None = None) -> None: ...
    async def close(self) -> None: ...
