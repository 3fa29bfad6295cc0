"""The store kept in this process: ``olbproxy demo`` and tests of routing alone.

Same contract as the MongoDB store (the store tests run against both), gone when the
process ends. Records are frozen dataclasses, so handing them out needs no copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime

from olbproxy.errors import Conflict
from olbproxy.store import ApiKey, Keys, User, UserChanges, Users


class MemoryUsers:
    def __init__(self) -> None:
        self._by_id: dict[str, User] = {}
        self._by_key: dict[str, str] = {}

    async def add(self, user: User) -> None:
        if user.username_key in self._by_key:
            raise Conflict(f"username '{user.username}' is taken")
        if user.id in self._by_id:
            raise Conflict(f"a user with id {user.id} exists already")
        self._by_id[user.id] = user
        self._by_key[user.username_key] = user.id

    async def get(self, user_id: str) -> User | None:
        return self._by_id.get(user_id)

    async def find(self, username_key: str) -> User | None:
        user_id = self._by_key.get(username_key)
        return None if user_id is None else self._by_id[user_id]

    async def get_many(self, user_ids: Collection[str]) -> list[User]:
        return [u for i in user_ids if (u := self._by_id.get(i)) is not None]

    async def list(self) -> list[User]:
        return sorted(self._by_id.values(), key=lambda u: u.username_key)

    async def update(self, user_id: str, changes: UserChanges) -> bool:
        user = self._by_id.get(user_id)
        if user is None:
            return False
        self._by_id[user_id] = dataclasses.replace(user, **changes)
        return True


class MemoryKeys:
    def __init__(self) -> None:
        self._by_id: dict[str, ApiKey] = {}

    async def add(self, key: ApiKey) -> None:
        if key.id in self._by_id:
            raise Conflict(f"an API key with id {key.id} exists already")
        self._by_id[key.id] = key

    async def get(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    async def get_many(self, key_ids: Collection[str]) -> list[ApiKey]:
        return [k for i in key_ids if (k := self._by_id.get(i)) is not None]

    async def list(self, user_id: str | None = None) -> list[ApiKey]:
        keys = (k for k in self._by_id.values() if user_id is None or k.user_id == user_id)
        return sorted(keys, key=lambda k: (k.created_at.timestamp() if k.created_at else 0, k.id))

    async def revoke(self, key_id: str, at: datetime) -> bool:
        key = self._by_id.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._by_id[key_id] = dataclasses.replace(key, revoked_at=at)
        return True


class MemoryStore:
    """Everything in dictionaries; nothing to start or close."""

    def __init__(self) -> None:
        self._users = MemoryUsers()
        self._keys = MemoryKeys()

    @property
    def users(self) -> Users:
        return self._users

    @property
    def keys(self) -> Keys:
        return self._keys

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
