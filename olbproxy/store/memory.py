"""The store kept in this process: ``olbproxy demo`` and tests of routing alone.

Same contract as the MongoDB store (the store tests run against both), gone when the
process ends. Records are frozen dataclasses, so handing them out needs no copies.
A demo left running must not grow without end: beyond ``MESSAGES_KEPT`` messages the
oldest are forgotten (their rooms stay, with fewer messages than turns).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from operator import attrgetter

from olbproxy.errors import Conflict
from olbproxy.store import (
    ApiKey,
    Audit,
    AuditEntry,
    Keys,
    Mark,
    Message,
    MessageKind,
    MessageMark,
    Messages,
    Room,
    Rooms,
    RoomStep,
    Served,
    User,
    UserChanges,
    Users,
)


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


_EARLIEST = datetime.min.replace(tzinfo=UTC)
MESSAGES_KEPT = 100_000


class MemoryRooms:
    def __init__(self) -> None:
        self._by_id: dict[str, Room] = {}

    async def get(self, room_id: str) -> Room | None:
        return self._by_id.get(room_id)

    async def get_many(self, room_ids: Sequence[str]) -> Sequence[Room]:
        return [self._by_id[i] for i in dict.fromkeys(room_ids) if i in self._by_id]

    async def open(self, rooms: Sequence[Room]) -> set[str]:
        taken = {room.id for room in rooms if room.id in self._by_id}
        for room in rooms:
            self._by_id.setdefault(room.id, room)
        return taken

    async def advance(self, steps: Sequence[RoomStep]) -> None:
        for step in steps:
            room = self._by_id.get(step.room_id)
            if room is None:
                continue
            updated = step.updated_at
            if room.updated_at is not None and room.updated_at > updated:
                updated = room.updated_at
            turns = max(room.turns, step.turns)
            served = step.served or room.served
            self._by_id[room.id] = dataclasses.replace(
                room, turns=turns, updated_at=updated, served=served
            )

    async def list(self, user_id: str, *, limit: int, before: Mark | None = None) -> list[Room]:
        rooms = [r for r in self._by_id.values() if r.user_id == user_id]
        rooms.sort(key=_room_mark, reverse=True)
        if before is not None:
            rooms = [r for r in rooms if _room_mark(r) < before]
        return rooms[:limit]

    async def rename(self, room_id: str, title: str) -> Room | None:
        room = self._by_id.get(room_id)
        if room is None:
            return None
        self._by_id[room_id] = room = dataclasses.replace(room, title=title)
        return room

    async def delete(self, room_id: str) -> bool:
        return self._by_id.pop(room_id, None) is not None

    async def placements(
        self, since: datetime, *, limit: int, other_than: str | None = None
    ) -> Sequence[tuple[str, Served]]:
        found = [
            (r.id, r.served)
            for r in self._by_id.values()
            if r.served
            and r.served.at >= since
            and (other_than is None or r.served.by != other_than)
        ]
        found.sort(key=lambda pair: pair[1].at)
        return found[:limit]


def _room_mark(room: Room) -> Mark:
    return (room.updated_at or _EARLIEST, room.id)


class MemoryMessages:
    def __init__(self) -> None:
        self._by_id: dict[str, Message] = {}

    async def add(self, messages: Sequence[Message]) -> set[str]:
        existing = set()
        for message in messages:
            if message.id in self._by_id:
                existing.add(message.id)
            else:
                self._by_id[message.id] = message
        while len(self._by_id) > MESSAGES_KEPT:
            del self._by_id[next(iter(self._by_id))]  # dicts keep insertion order
        return existing

    async def get_many(self, ids: Collection[str]) -> list[Message]:
        return [m for i in ids if (m := self._by_id.get(i)) is not None]

    async def find_head(self, user_id: str, hashes: Sequence[str]) -> Message | None:
        found = {
            m.full_hash: m
            for m in sorted(self._by_id.values(), key=attrgetter("mark"))
            if m.user_id == user_id and m.room_id is not None and m.full_hash in hashes
        }
        return next((found[h] for h in hashes if h in found), None)

    async def list(
        self,
        room_id: str,
        *,
        limit: int,
        after: MessageMark | None = None,
        kinds: Collection[MessageKind] = ("turn", "generate"),
    ) -> list[Message]:
        messages = [m for m in self._by_id.values() if m.room_id == room_id and m.kind in kinds]
        messages.sort(key=attrgetter("mark"))
        if after is not None:
            messages = [m for m in messages if m.mark > after]
        return messages[:limit]

    async def delete_room(self, room_id: str) -> int:
        doomed = [i for i, m in self._by_id.items() if m.room_id == room_id]
        for message_id in doomed:
            del self._by_id[message_id]
        return len(doomed)


class MemoryAudit:
    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []

    async def add(self, entry: AuditEntry) -> None:
        self._entries.append(entry)

    async def list(
        self, *, since: datetime | None = None, user: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        found = [
            e
            for e in self._entries
            if (since is None or e.at >= since) and (user is None or user in e.users)
        ]
        found.sort(key=lambda e: (e.at, e.id), reverse=True)
        return found[:limit]


class MemoryStore:
    """Everything in dictionaries; nothing to start or close."""

    def __init__(self) -> None:
        self._users = MemoryUsers()
        self._keys = MemoryKeys()
        self._rooms = MemoryRooms()
        self._messages = MemoryMessages()
        self._audit = MemoryAudit()

    @property
    def users(self) -> Users:
        return self._users

    @property
    def keys(self) -> Keys:
        return self._keys

    @property
    def rooms(self) -> Rooms:
        return self._rooms

    @property
    def messages(self) -> Messages:
        return self._messages

    @property
    def audit(self) -> Audit:
        return self._audit

    async def start(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass
