"""Options: what placement weighs for one request (placement.py), and what it decides.

For each instance that could take the request, an ``Option``: its cost in seconds and
the cache it would reuse there; the ``Decision`` names the chosen one, or the one worth
waiting for; a placed request holds a ``Ticket`` while it runs, so that later choices
know how long its slot stays taken. Each choice has a reason, counted by the metrics and
kept on each record:

    sticky         to the instance that served the exchange this one continues
    prefix         to the instance holding the longest worthwhile prefix
    resident       no prefix anywhere: round-robin among instances with the model loaded
    cold           the model is loaded nowhere with a free slot worth taking: a load
    fallback_busy  the instance with the prefix was busy and waiting cost more
    round_robin    the group's placement is round_robin (the next free instance)
"""

from __future__ import annotations

from dataclasses import dataclass

from olbproxy.exchange import Exchange
from olbproxy.pool import Backend

REASONS = ("sticky", "prefix", "resident", "round_robin", "cold", "fallback_busy")


@dataclass(slots=True)
class Ticket:
    """A request running (or loading, or prefilling) on an instance."""

    exchange: Exchange
    model: str
    started: float  # monotonic, when the slot was taken
    before: float  # seconds expected before its first token (load + prefill)
    answer_tokens: float
    work: float = 0.0  # seconds of work it is expected to take, counted while it runs


@dataclass(slots=True)
class Option:
    backend: Backend
    cost: float
    wait: float
    cached: float  # tokens
    kind: str  # sticky, prefix or ""
    free: bool
    resident: bool
    loading: bool = False  # not resident, but a load is under way


@dataclass(slots=True)
class Decision:
    """What ``Planner.choose`` decided for one request at one moment."""

    backend: Backend | None  # None: wait
    reason: str = ""
    option: Option | None = None  # the chosen one, or the one worth waiting for
    recheck: float | None = None  # seconds until a fresh look, when waiting by choice


def header(exchange: Exchange) -> str | None:
    """The ``X-Olbproxy-Placement`` value: the decision in a few words."""
    placed = exchange.placed
    if placed is None or not placed.reason:
        return None
    return (
        f"{placed.reason}; backend={exchange.backend}; "
        f"cached_tokens={placed.cached_tokens:.0f}; queued={exchange.queue_wait:.3f}s"
    )
