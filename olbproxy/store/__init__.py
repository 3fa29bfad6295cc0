"""Persistence: what olbproxy keeps, behind protocols split by noun, and two backends.

    Store                      the whole persistence layer, opened by ``open_store``
    ├── users: Users           accounts (username, password hash, role, groups)
    └── keys: Keys             API keys (hashed; revocable)

``store/mongo.py`` (pymongo's ``AsyncMongoClient``; the only module that imports
pymongo) is the real one; ``store/memory.py`` keeps everything in the process for
``olbproxy demo`` and for tests of routing alone. Both raise ``Conflict`` when a
unique name is taken and ``Unavailable`` (503) when the database does not answer.
Conversations (rooms, messages) join ``Store`` as further nouns.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypedDict

from olbproxy.config import Settings
from olbproxy.errors import ConfigError
from olbproxy.principal import Role


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    # 24 hex digits: the shape of a MongoDB ObjectId, so seed users' ids fit beside ours.
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str  # as the user typed it, NFC-normalised and trimmed
    username_key: str  # the unique, case-insensitive form (accounts.username_key)
    password_hash: str = ""
    role: Role = "user"
    # None: every group; otherwise the names of the groups this user may use.
    groups: frozenset[str] | None = None
    disabled: bool = False
    created_at: datetime | None = None
    last_login_at: datetime | None = None


class UserChanges(TypedDict, total=False):
    password_hash: str
    role: Role
    groups: frozenset[str] | None
    disabled: bool
    last_login_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str  # public part of the key, shown by `key list`, used by `key revoke`
    user_id: str
    secret_hash: str  # sha256 of the whole key (tokens.key_hash); the key itself is not kept
    label: str = ""
    # A trusted front-end (Open WebUI) may name its end users in X-OpenWebUI-User-* headers.
    front_end: bool = False
    # None: the owner's groups; otherwise at most these.
    groups: frozenset[str] | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SeedUser:
    """A user of the seed's Next.js app, as read from its ``users`` collection."""

    source_id: str
    username: str
    password_hash: str
    created_at: datetime | None = None


class Users(Protocol):
    async def add(self, user: User) -> None:
        """Insert; ``Conflict`` if the username_key (or the id) is taken."""

    async def get(self, user_id: str) -> User | None: ...

    async def find(self, username_key: str) -> User | None: ...

    async def get_many(self, user_ids: Collection[str]) -> list[User]: ...

    async def list(self) -> list[User]: ...

    async def update(self, user_id: str, changes: UserChanges) -> bool:
        """Apply changes; False if there is no such user."""


class Keys(Protocol):
    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def get_many(self, key_ids: Collection[str]) -> list[ApiKey]: ...

    async def list(self, user_id: str | None = None) -> list[ApiKey]: ...

    async def revoke(self, key_id: str, at: datetime) -> bool:
        """Mark revoked; False if there is no such key or it was revoked already."""


class Store(Protocol):
    @property
    def users(self) -> Users: ...

    @property
    def keys(self) -> Keys: ...

    async def start(self) -> None:
        """Prepare (indexes); a database that does not answer yet is logged, not fatal."""

    async def close(self) -> None: ...


def open_store(settings: Settings) -> Store:
    """The store named by ``store.backend``; nothing is connected until ``start()``."""
    if settings.store.backend == "memory":
        from olbproxy.store.memory import MemoryStore

        return MemoryStore()
    if not settings.store.mongodb_uri:
        raise ConfigError(
            f"{settings.source}: store.mongodb_uri: store.backend mongodb needs a MongoDB URI; "
            "set MONGODB_URI (environment or .env.local), e.g. mongodb://127.0.0.1:27017/gpt"
        )
    from olbproxy.store.mongo import MongoStore

    return MongoStore(settings.store)
