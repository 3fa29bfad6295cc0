"""Directory: the users and API keys the request path needs, held in memory.

A request never waits for MongoDB once its user or key is known: each is read on
first use, then ``run()`` re-reads all of them together every ``auth.cache_seconds``
(two ``$in`` queries). That re-read is how a revoked key, a disabled user or a
changed group list takes effect within ``cache_seconds``. Ids found missing are
remembered as such for the same time, so a client that keeps sending a deleted key
does not cost a query per request. While MongoDB is down the last answers stand:
known users keep working, and only first uses fail (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from olbproxy.cache import Bounded
from olbproxy.errors import Unavailable
from olbproxy.store import ApiKey, Store, User

log = logging.getLogger("olbproxy.auth.directory")

T = TypeVar("T", User, ApiKey)

ABSENT_SIZE = 10_000


class Directory:
    """Cached users (by id) and API keys (by key id, revoked ones included)."""

    def __init__(
        self,
        store: Store,
        *,
        refresh_seconds: float,
        trusted_user: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        # username_key of auth.trusted_user: who requests from trusted networks are.
        self.trusted_key = trusted_user
        self.clock = clock
        self.users: dict[str, User] = {}
        self.keys: dict[str, ApiKey] = {}
        self.trusted: User | None = None
        # "u:<id>" / "k:<id>" -> until (clock): ids found missing, not asked again until then.
        self._absent: Bounded[str, float] = Bounded(ABSENT_SIZE)
        self._down = False

    async def user(self, user_id: str) -> User | None:
        user = self.users.get(user_id)
        if user is not None:
            return user
        return await self._first_use("u:", user_id, self.store.users.get, self.users)

    async def key(self, key_id: str) -> ApiKey | None:
        key = self.keys.get(key_id)
        if key is not None:
            return key
        return await self._first_use("k:", key_id, self.store.keys.get, self.keys)

    async def trusted_user(self) -> User | None:
        """The user that requests from ``auth.trusted_networks`` are served as."""
        if self.trusted is None and self.trusted_key:
            self.trusted = await self._first_use("t:", self.trusted_key, self.store.users.find, {})
        return self.trusted

    def learn_user(self, user: User) -> None:
        """A change made through this proxy (the account pages): in effect here at once.

        Only users already cached are replaced (others are read on first use). A refresh
        that read the store just before the change may put the old record back; the next
        refresh corrects it, as it does for changes made by the CLI or another proxy.
        """
        if user.id in self.users:
            self.users[user.id] = user
        if self.trusted is not None and self.trusted.id == user.id:
            self.trusted = user

    def learn_key(self, key: ApiKey) -> None:
        """As ``learn_user``, for a key revoked through this proxy."""
        if key.id in self.keys:
            self.keys[key.id] = key

    async def _first_use(
        self,
        kind: str,
        ident: str,
        fetch: Callable[[str], Awaitable[T | None]],
        cache: dict[str, T],
    ) -> T | None:
        marker = kind + ident
        until = self._absent.get(marker)
        if until is not None:
            if until > self.clock():
                return None
            self._absent.pop(marker)
        found = await fetch(ident)
        if found is None:
            self._absent.put(marker, self.clock() + self.refresh_seconds)
        else:
            cache[ident] = found
        return found

    async def refresh(self) -> None:
        """Re-read every cached user and key (and the trusted user) from the store."""
        user_ids, key_ids = list(self.users), list(self.keys)
        users = {u.id: u for u in await self.store.users.get_many(user_ids)}
        keys = {k.id: k for k in await self.store.keys.get_many(key_ids)}
        trusted = await self.store.users.find(self.trusted_key) if self.trusted_key else None
        # Entries added by first uses during the awaits above are kept as they are.
        for ident in user_ids:
            if ident not in users:
                self.users.pop(ident, None)
        for ident in key_ids:
            if ident not in keys:
                self.keys.pop(ident, None)
        self.users.update(users)
        self.keys.update(keys)
        self.trusted = trusted
        now = self.clock()
        for marker in self._absent:
            until = self._absent.get(marker)
            if until is not None and until <= now:
                self._absent.pop(marker)

    async def run(self) -> None:
        """Refresh every ``refresh_seconds`` until cancelled; outages are logged once."""
        while True:
            try:
                await self.refresh()
            except Unavailable:
                if not self._down:
                    log.warning(
                        "identities not refreshed: MongoDB is unreachable; "
                        "keeping the last known users and keys"
                    )
                self._down = True
            else:
                if self._down:
                    log.info("identities refreshed again: MongoDB answers")
                self._down = False
            await asyncio.sleep(self.refresh_seconds)
