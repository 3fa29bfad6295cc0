"""Filing: which room each record goes to, and in which position.

Resolved in the recorder's writer, off the request path, one record after another in
the order the exchanges finished (turn N is always recorded before turn N+1 exists):

1. a background task is linked to the room its request named, if that room is not
   someone else's; it never opens a room and is not a turn;
2. a named room (``X-Room-Id``, or Open WebUI's chat id from a trusted front-end) is
   used when it is the caller's, and opened under that id when it does not exist yet;
   someone else's room was refused by the preflight check, but when the database could
   not answer then, the record goes to a new room of the caller's instead (logged);
3. otherwise the history hashes (history.py) find the turn this one continues,
   first in memory, then in the database;
4. otherwise a new room opens, its id the exchange id of its first record: replaying
   that record can only ever open the same room. Exchange ids are random (the OS's
   cryptographic source), but whatever collides, a room is never shared: when the id
   is another user's room already (found while planning, or taken by another proxy
   between planning and writing: ``clashes``), the record opens a room under a fresh
   random id instead.

Positions (``seq``) count the room's turns. Room documents only grow (``$max`` of turns
and updated_at), so a replay that finds its message already written re-applies the
stored position and changes nothing else.

What is learned while planning a batch stays in the plan until the batch is written;
only then does it enter the bounded caches (owners, turns, history heads), so a failed
write leaves nothing behind that the replay could trip over.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from olbproxy.cache import Bounded
from olbproxy.persistence.record import Record, moment
from olbproxy.store import Message, Room, RoomStep, Store

log = logging.getLogger("olbproxy.persistence.filing")

CACHE_SIZE = 10_000


def new_room_id() -> str:
    return secrets.token_hex(16)


@dataclass(slots=True)
class Plan:
    """What writing one batch takes: rooms to open, messages, room progress."""

    rooms: list[Room] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    steps: dict[str, RoomStep] = field(default_factory=dict)
    # Learned while planning; enters the caches once the batch is written.
    owners: dict[str, str | None] = field(default_factory=dict)  # None: no such room
    turns: dict[str, int] = field(default_factory=dict)
    heads: dict[tuple[str, str], str] = field(default_factory=dict)

    def progress(self, room_id: str, seq: int, record: Record) -> None:
        at = moment(record.ended_at)
        served = record.served()
        step = self.steps.get(room_id)
        if step is not None:
            seq, at = max(seq, step.turns), max(at, step.updated_at)
            served = served or step.served
        self.steps[room_id] = RoomStep(room_id, seq, at, served)


class Filing:
    """Files records into rooms; remembers owners, turns and history heads it has seen."""

    def __init__(self, store: Store, *, cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self._owners: Bounded[str, str] = Bounded(cache_size)
        self._turns: Bounded[str, int] = Bounded(cache_size)
        self._heads: Bounded[tuple[str, str], str] = Bounded(cache_size)

    # -- for the preflight check and the rooms API -----------------------------------

    def owner(self, room_id: str) -> str | None:
        """The room's owner if known without asking the database."""
        return self._owners.get(room_id)

    def learn_owner(self, room_id: str, user_id: str) -> None:
        self._owners.put(room_id, user_id)  # an owner never changes: safe from any reader

    def forget(self, room_id: str) -> None:
        """The room was deleted: its heads now lead nowhere (checked on use)."""
        self._owners.pop(room_id)
        self._turns.pop(room_id)

    # -- for the writer -----------------------------------------------------------------

    async def plan(self, records: Sequence[Record], *, replay: bool) -> Plan:
        """Where each record goes; reads the database only for what memory lacks."""
        plan = Plan()
        written: dict[str, Message] = {}
        if replay:
            # Some of these may have been written before the outage (or the crash).
            written = {m.id: m for m in await self.store.messages.get_many([r.id for r in records])}
        await self._prefetch(plan, [r for r in records if r.id not in written])
        for index, record in enumerate(records, 1):
            done = written.get(record.id)
            if done is not None:
                await self._rewritten(plan, record, done)
            else:
                await self._place(plan, record)
            if index % 8 == 0:
                await asyncio.sleep(0)  # planning shares the loop with streams: small slices
        return plan

    async def _prefetch(self, plan: Plan, records: Sequence[Record]) -> None:
        # The owners of the rooms a batch names or may open, in one read, not one read
        # per record (a new conversation asks whether its room id is free): against the
        # database, a batch of 32 first turns is then 3 operations instead of 34.
        wanted = {
            room_id
            for record in records
            for room_id in (record.named_room, record.id if self._may_open(record) else None)
            if room_id is not None and not self._known(room_id)
        }
        if not wanted:
            return
        found = {room.id: room for room in await self.store.rooms.get_many(sorted(wanted))}
        for room_id in wanted:
            room = found.get(room_id)
            plan.owners[room_id] = None if room is None else room.user_id
            if room is not None:
                plan.turns.setdefault(room_id, room.turns)

    def _may_open(self, record: Record) -> bool:
        # A turn whose conversation is known continues it: its own id is never asked for.
        heads = self._heads
        return record.opens_room and not any(
            heads.get((record.user_id, d)) for d in record.continues
        )

    def _known(self, room_id: str) -> bool:
        return self._owners.get(room_id) is not None and self._turns.get(room_id) is not None

    def commit(self, plan: Plan) -> None:
        for room_id, owner in plan.owners.items():
            if owner is not None:
                self._owners.put(room_id, owner)
        for room_id, turns in plan.turns.items():
            self._turns.put(room_id, turns)
        for key, room_id in plan.heads.items():
            self._heads.put(key, room_id)

    async def _rewritten(self, plan: Plan, record: Record, message: Message) -> None:
        # Already in the database: re-apply its room's progress, chain on its hash.
        room_id, seq = message.room_id, message.seq
        if room_id is None:
            return
        if seq is not None and await self._owner(plan, room_id) is not None:
            turns = await self._turns_of(plan, room_id)
            plan.turns[room_id] = max(turns, seq)
            plan.progress(room_id, seq, record)
        if message.full_hash:
            plan.heads[message.user_id, message.full_hash] = room_id

    async def _place(self, plan: Plan, record: Record) -> None:
        named = record.named_room
        owner = None if named is None else await self._owner(plan, named)
        if record.kind == "task":
            # Linked to its conversation, never opening one, never a turn.
            linked = named if named is not None and owner in (None, record.user_id) else None
            plan.messages.append(record.message(linked, None))
            return
        room: str | None = None
        if named is not None:
            if owner is None:
                self._open(plan, record, named)
                room = named
            elif owner == record.user_id:
                room = named
            else:
                log.warning(
                    "record %s named room %s of another user; filed in a room of %s's own",
                    record.id,
                    named,
                    record.user_name,
                )
        if room is None:
            room = await self._continued(plan, record)
        if room is None and record.opens_room:
            room = record.id
            owner = await self._owner(plan, room)
            if owner is not None and owner != record.user_id:
                log.error(
                    "record %s: room id %s belongs to another user; opening a fresh room",
                    record.id,
                    room,
                )
                room = new_room_id()
                owner = None
            if owner is None:
                self._open(plan, record, room)
        if room is None:
            plan.messages.append(record.message(None, None))
            return
        seq = await self._turns_of(plan, room) + 1
        plan.turns[room] = seq
        plan.progress(room, seq, record)
        plan.messages.append(record.message(room, seq))
        if record.full_hash:
            plan.heads[record.user_id, record.full_hash] = room

    async def clashes(self, plan: Plan, taken: set[str]) -> bool:
        """Whether a room this plan opens was taken by another user meanwhile (another
        proxy sharing the database): the batch must then be planned again."""
        for room in plan.rooms:
            if room.id in taken:
                existing = await self.store.rooms.get(room.id)
                if existing is not None and existing.user_id != room.user_id:
                    log.error("room id %s was taken by another user meanwhile", room.id)
                    return True
        return False

    def _open(self, plan: Plan, record: Record, room_id: str) -> None:
        plan.rooms.append(record.room(room_id))
        plan.owners[room_id] = record.user_id
        plan.turns[room_id] = 0

    async def _continued(self, plan: Plan, record: Record) -> str | None:
        if not record.continues:
            return None
        for digest in record.continues:
            key = (record.user_id, digest)
            room = plan.heads.get(key) or self._heads.get(key)
            # A head may outlive its room (deleted through the API): check before use.
            if room is not None and await self._owner(plan, room) == record.user_id:
                return room
        head = await self.store.messages.find_head(record.user_id, record.continues)
        if head is None or head.room_id is None:
            return None
        if await self._owner(plan, head.room_id) != record.user_id:
            return None
        return head.room_id

    async def _owner(self, plan: Plan, room_id: str) -> str | None:
        if room_id in plan.owners:
            return plan.owners[room_id]
        if self._known(room_id):
            return self._owners.get(room_id)
        room = await self.store.rooms.get(room_id)
        plan.owners[room_id] = None if room is None else room.user_id
        if room is not None:
            plan.turns.setdefault(room_id, room.turns)
        return plan.owners[room_id]

    async def _turns_of(self, plan: Plan, room_id: str) -> int:
        if room_id in plan.turns:
            return plan.turns[room_id]
        turns = self._turns.get(room_id)
        if turns is None:
            room = await self.store.rooms.get(room_id)
            turns = 0 if room is None else room.turns
        plan.turns[room_id] = turns
        return turns
