"""Seat: a model request's slot on the instance the planner chose (placement.py), and
the body it is sent with (a group's pinned runner options).

``seat`` is where a model request meets placement: it hashes the prompt for the planner
(prompt.py), or, in a ``round_robin`` group, takes the next free slot instead."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson

from olbproxy.exchange import Exchange, Placed
from olbproxy.options import Ticket
from olbproxy.placement import Planner
from olbproxy.pool import Backend, Group, SlotPlacement
from olbproxy.prompt import prompt_of
from olbproxy.settings import PinnedOptions


def seat(
    planner: Planner,
    group: Group,
    model: str,
    user: str,
    exchange: Exchange,
    body: dict[str, Any] | None,
    raw: bytes,
    *,
    interactive: bool,
) -> tuple[Seat | SlotPlacement, bytes]:
    """The placement for one model request, and the bytes to send (pinned options).
    ``body``: the parsed JSON body, None for a request that has none (a form)."""
    pinned = with_pins(body, group.settings.pin_options) if body is not None else None
    if pinned is not None:
        body, raw = pinned, orjson.dumps(pinned)
    if group.settings.placement == "round_robin":
        exchange.placed = Placed("round_robin")
        pool, placements = planner.pool, planner.placements
        return SlotPlacement(pool, group, model, user, interactive, placements), raw
    prompt = prompt_of(exchange.endpoint, model, body) if body is not None else None
    exchange.placed = Placed("", prompt)
    return Seat(planner, group, model, user, interactive, exchange), raw


def with_pins(body: dict[str, Any], pins: PinnedOptions) -> dict[str, Any] | None:
    """The body with the group's pinned runner options, or None when nothing changes."""
    if not pins:
        return None
    options = body.get("options")
    options = options if isinstance(options, dict) else {}
    if all(options.get(k) == v and type(options.get(k)) is type(v) for k, v in pins):
        return None
    return {**body, "options": {**options, **dict(pins)}}


class Seat:
    """A model request's slot, where the planner says (attempt.Placement)."""

    __slots__ = ("exchange", "group", "interactive", "model", "planner", "ticket", "user")

    def __init__(
        self,
        planner: Planner,
        group: Group,
        model: str,
        user: str,
        interactive: bool,
        exchange: Exchange,
    ) -> None:
        self.planner, self.group, self.model = planner, group, model
        self.user, self.interactive, self.exchange = user, interactive, exchange
        self.ticket: Ticket | None = None

    def _choose(self, exclude: Collection[Backend]) -> Backend | None:
        planner = self.planner
        placed = self.exchange.placed
        prompt = placed.prompt if placed is not None else None
        decision = planner.choose(self.group, self.model, prompt, exclude, me=self)
        if decision.backend is None:
            if decision.option is not None:
                planner.waiting[self] = decision.option.backend.label
            if decision.recheck is not None:
                self.group.admission.wake_in(decision.recheck)
            return None
        planner.waiting.pop(self, None)
        option = decision.option
        assert option is not None
        if placed is not None:
            placed.reason, placed.cached_tokens = decision.reason, option.cached
        planner.placements[self.group.name, decision.reason] += 1
        self.ticket = planner.started(decision.backend, self.exchange, self.model, option)
        return decision.backend

    async def acquire(self, exclude: Collection[Backend]) -> Backend:
        try:
            return await self.group.admission.acquire(
                self.model,
                user=self.user,
                interactive=self.interactive,
                exclude=exclude,
                choose=self._choose,
            )
        finally:
            self.planner.waiting.pop(self, None)

    def release(self, backend: Backend) -> None:
        if self.ticket is not None:
            self.planner.ended(backend, self.ticket)
            self.ticket = None
        backend.give(self.model)
        self.planner.pool.slot_freed(backend)
