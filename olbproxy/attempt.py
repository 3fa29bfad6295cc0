"""Attempt: what each of a request's tries at a backend is given by its caller.

Where it goes (``Placement``: the slot the planner chose, seat.py, or one of pool.py's
placements) and how long it may wait (``Deadlines``). The relay (relay.py) makes the
attempts: another instance may take the request until the first byte.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from olbproxy.exchange import Exchange
from olbproxy.pool import Backend


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds allowed to the first byte (None: unbounded) and between two chunks."""

    first_byte: float | None
    idle: float | None = None


# Relay._whole or Relay._streamed: one attempt through the lane.
LanePath = Callable[
    [web.Request, Exchange, Backend, bytes | None, Deadlines, str],
    Awaitable[web.StreamResponse],
]


class Placement(Protocol):
    """Where an attempt goes: hands out a backend and takes it back afterwards."""

    async def acquire(self, exclude: Sequence[Backend]) -> Backend: ...

    def release(self, backend: Backend) -> None: ...
