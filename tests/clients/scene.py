"""The scene every client library meets: authentication and recording on, two groups.

* group ``20b``: ``gpt-oss:20b`` and ``embeddinggemma`` on one simulator (``small``);
* group ``120b``: ``gpt-oss:120b`` on another (``large``), one slot and no queue, so
  :func:`full_group` can make it answer 503 by holding its only slot.

Credentials, as a user would hold them: ``kim`` has an API key for every group, ``lee``
one for the ``120b`` group only (403 on ``gpt-oss:20b``), ``root`` an admin's key (pull,
create, delete). ``BAD_KEY`` looks like a key and is none (401).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from identity import Site, bearer

from olbproxy.auth.tokens import new_api_key
from olbproxy.simulator import OllamaSimulator
from olbproxy.store import Message

SMALL = "gpt-oss:20b"
BIG = "gpt-oss:120b"
EMBEDDING = "embeddinggemma"
UNKNOWN = "llama3"
# Well-formed, but no such key exists.
BAD_KEY = new_api_key("nobody")[1]
STATUSES = (401, 403, 404, 503)


@dataclass
class Clients:
    """The site and the credentials the client tests use."""

    site: Site
    key: str  # kim: every group
    limited_key: str  # lee: the 120b group only
    admin_key: str  # root

    @property
    def url(self) -> str:
        return self.site.url

    @property
    def small(self) -> OllamaSimulator:
        return self.site.small

    @property
    def large(self) -> OllamaSimulator:
        return self.site.large

    def requests_to(self, path: str) -> int:
        """How many requests for ``path`` reached either simulator."""
        sims = (self.site.small, self.site.large)
        return sum(1 for sim in sims for r in sim.requests if r.path == path)

    async def recorded(
        self,
        username: str,
        until: Callable[[list[Message]], bool] = bool,
        within: float = 5.0,
    ) -> list[Message]:
        """The user's recorded messages, oldest first, once ``until`` holds for them.

        Records are written after the answer's last byte, so a client can finish first:
        poll the store (no event exists for "this record is in").
        """
        user = await self.site.accounts.user(username)
        store = self.site.store
        async with asyncio.timeout(within):
            while True:
                rooms = await store.rooms.list(user.id, limit=100)
                messages = [m for r in rooms for m in await store.messages.list(r.id, limit=100)]
                messages.sort(key=lambda m: m.started_at)
                if until(messages):
                    return messages
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def full_group(clients: Clients) -> AsyncIterator[None]:
    """The 120b group's only slot held by a stream its simulator never answers.

    With ``queue_size: 0`` the next request for ``gpt-oss:120b`` gets the proxy's 503.
    """
    large = clients.large
    large.faults.hang = True
    body = {"model": BIG, "messages": [{"role": "user", "content": "hold"}]}

    async def hold() -> None:
        http = clients.site.proxy.http
        async with http.post(clients.url + "/api/chat", json=body, headers=bearer(clients.key)):
            pass

    holder = asyncio.create_task(hold())
    try:
        await large.wait_until(lambda: large.stats.active == 1)
        yield
    finally:
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
        large.faults.hang = False
        await large.wait_until(lambda: large.stats.active == 0)


@dataclass(frozen=True)
class Refusal:
    """A request the proxy refuses with ``status``: whose key, which model, what it says."""

    status: int
    key: str
    model: str
    message: str  # the start of the proxy's error message


@contextlib.asynccontextmanager
async def refused(clients: Clients, status: int) -> AsyncIterator[Refusal]:
    """Set the scene for one of STATUSES: a bad key, another group, no such model, full."""
    if status == 401:
        yield Refusal(401, BAD_KEY, SMALL, "invalid API key")
    elif status == 403:
        yield Refusal(403, clients.limited_key, SMALL, f"you may not use model '{SMALL}'")
    elif status == 404:
        yield Refusal(404, clients.key, UNKNOWN, f"model '{UNKNOWN}' not found")
    elif status == 503:
        async with full_group(clients):
            yield Refusal(503, clients.key, BIG, "group '120b' is at capacity")
    else:
        raise AssertionError(status)
