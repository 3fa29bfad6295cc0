"""Admission: a request waits for a free slot instead of piling onto a busy instance.

Each group has one bounded queue made of one pair of lanes per user: interactive
(streaming) requests and background ones (non-streaming, e.g. Open WebUI's title and
tag tasks). A freed slot goes to the next user in rotation, and within that user's
turn to the interactive lane first, so one user's burst cannot starve the others.
A waiter that cannot be served any more (its client left, its wait timed out, every
backend it may use went down) leaves the queue at once.

Which backend a request takes is asked of its ``choose`` (placement.py: the one where
its prompt is cached, unless waiting there costs more), or is the group's next free
one in round-robin order. A chooser may decline a free slot to wait for a better one;
it then asks for a fresh look later (``wake_in``), since no slot freeing may prompt one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from olbproxy.errors import Unavailable
from olbproxy.settings import GroupSettings


class Slots(Protocol):
    """An instance as the queue sees it (pool.B): slots taken and given back."""

    @property
    def label(self) -> str: ...

    @property
    def last_error(self) -> str | None: ...

    def take(self, model: str) -> None: ...

    def give(self, model: str) -> None: ...


B = TypeVar("B", bound=Slots)


class Members(Protocol[B]):
    """A group as the queue sees it (pool.Group): which instance has a free slot."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> GroupSettings: ...

    @property
    def backends(self) -> Sequence[B]: ...

    slot_freed: Callable[[B], None]

    def pick(self, model: str, exclude: Collection[B] = ()) -> B | None: ...

    def healthy(self, exclude: Collection[B] = ()) -> list[B]: ...


# A backend with a free slot for the request (not one of those excluded), or None: wait.
Choose = Callable[[Collection[B]], B | None]


@dataclass(eq=False)
class Waiter(Generic[B]):
    user: str
    model: str
    interactive: bool
    exclude: Collection[B]
    future: asyncio.Future[B] = field(repr=False)
    choose: Choose[B] | None = field(default=None, repr=False)
    since: float = field(default_factory=time.monotonic)


class Admission(Generic[B]):
    """The wait queue of one group."""

    def __init__(self, group: Members[B]) -> None:
        self.group = group
        self._users: OrderedDict[str, tuple[deque[Waiter[B]], deque[Waiter[B]]]] = OrderedDict()
        self.waiting = 0
        self.closed: str | None = None
        self._wake: asyncio.TimerHandle | None = None

    async def acquire(
        self,
        model: str,
        *,
        user: str,
        interactive: bool,
        exclude: Collection[B] = (),
        choose: Choose[B] | None = None,
    ) -> B:
        """Take a slot for ``model`` on a backend not in ``exclude``; wait if none is free
        (or if ``choose`` would rather wait for a busy one)."""
        group = self.group
        if self.closed:
            raise Unavailable(self.closed)
        # Only healthy backends have a free slot.
        backend = choose(exclude) if choose is not None else group.pick(model, exclude)
        if backend is not None:
            backend.take(model)
            return backend
        if not group.healthy(exclude):
            raise Unavailable(self.none_healthy(exclude))
        limit = group.settings.queue_size
        if self.waiting >= limit:
            raise Unavailable(
                f"group {group.name!r} is at capacity: all slots are busy and "
                f"{limit} requests are already waiting"
            )
        future: asyncio.Future[B] = asyncio.get_running_loop().create_future()
        waiter = Waiter(user, model, interactive, exclude, future, choose)
        self._enqueue(waiter)
        timeout = group.settings.queue_timeout
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except TimeoutError:
            self._abandon(waiter)
            raise Unavailable(f"group {group.name!r} had no free slot for {timeout:g}s") from None
        except BaseException:
            # The client left (cancellation) or the queue failed us: never keep a slot
            # that a completed future handed over a moment too late.
            self._abandon(waiter)
            raise

    def dispatch(self) -> None:
        """Hand free slots to waiters, fairly; fail waiters no backend can serve any more."""
        group = self.group
        served = True
        while self.waiting and served:
            served = False
            for user, lanes in list(self._users.items()):
                for lane in lanes:
                    for waiter in lane:
                        if waiter.choose is not None:
                            backend = waiter.choose(waiter.exclude)
                        else:
                            backend = group.pick(waiter.model, waiter.exclude)
                        if backend is not None:
                            backend.take(waiter.model)
                            self._remove(waiter)
                            waiter.future.set_result(backend)
                            if user in self._users:
                                self._users.move_to_end(user)
                            served = True
                            break
                        if not group.healthy(waiter.exclude):
                            self._remove(waiter)
                            reason = self.none_healthy(waiter.exclude)
                            waiter.future.set_exception(Unavailable(reason))
                            served = True
                            break
                    if served:
                        break
                if served:
                    break

    def wake_in(self, seconds: float) -> None:
        """Look at the queue again after ``seconds`` (the soonest such request wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(seconds, 0.001)
        if self._wake is not None and not self._wake.cancelled() and self._wake.when() <= when:
            return
        if self._wake is not None:
            self._wake.cancel()
        self._wake = loop.call_at(when, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self.dispatch()

    def close(self, reason: str) -> None:
        """Fail everyone still waiting (the group was removed by a reload)."""
        self.closed = reason
        for lanes in list(self._users.values()):
            for lane in lanes:
                for waiter in list(lane):
                    self._remove(waiter)
                    waiter.future.set_exception(Unavailable(reason))

    def _enqueue(self, waiter: Waiter[B]) -> None:
        lanes = self._users.get(waiter.user)
        if lanes is None:
            lanes = self._users[waiter.user] = (deque(), deque())
        lanes[0 if waiter.interactive else 1].append(waiter)
        self.waiting += 1

    def _remove(self, waiter: Waiter[B]) -> bool:
        lanes = self._users.get(waiter.user)
        if lanes is None:
            return False
        lane = lanes[0 if waiter.interactive else 1]
        try:
            lane.remove(waiter)
        except ValueError:
            return False
        self.waiting -= 1
        if not lanes[0] and not lanes[1]:
            del self._users[waiter.user]
        return True

    def _abandon(self, waiter: Waiter[B]) -> None:
        if self._remove(waiter):
            return
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            # A slot was assigned just as the waiter gave up: give it to the next one.
            backend = future.result()
            backend.give(waiter.model)
            self.group.slot_freed(backend)

    def none_healthy(self, exclude: Collection[B]) -> str:
        group = self.group
        if exclude and group.healthy():
            return f"every backend of group {group.name!r} failed this request"
        down = ", ".join(f"{b.label} ({b.last_error or 'down'})" for b in group.backends)
        return f"no healthy backend in group {group.name!r}: {down}"

    def __repr__(self) -> str:
        return f"<Admission {self.group.name} waiting={self.waiting} users={len(self._users)}>"
