"""MongoDB rooms and messages: the rooms half of the MongoDB store (mongo.py).

Writes are batched by the recorder; every read and write runs under one client-side
deadline (``store.timeout``), so a server that accepts connections but never answers
cannot hold the recorder. Documents of the seed app that share these collections are
never matched by a query (they lack the string ``user_id``/``room_id`` we filter on)
and are read tolerantly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from olbproxy.store import Mark, Message, MessageKind, MessageMark, Room, RoomStep, Served
from olbproxy.store.mongo_errors import mongo_errors

Document = dict[str, Any]

_DUPLICATE_KEY = 11000


def _duplicates(exc: BulkWriteError, docs: Sequence[Document]) -> set[str]:
    """The ids a batched insert found taken; any other failure is raised again."""
    errors = exc.details.get("writeErrors", [])
    if exc.details.get("writeConcernErrors") or any(
        e.get("code") != _DUPLICATE_KEY for e in errors
    ):
        raise exc
    return {str(docs[e["index"]]["_id"]) for e in errors}


def _served_doc(served: Served) -> Document:
    doc = {"key": served.key, "backend": served.backend, "at": served.at}
    if served.by is not None:
        doc["by"] = served.by
    return doc


def _served(value: Any) -> Served | None:
    if not isinstance(value, dict):
        return None
    key, backend, at = value.get("key"), value.get("backend"), value.get("at")
    if isinstance(key, str) and isinstance(backend, str) and isinstance(at, datetime):
        by = value.get("by")
        return Served(key, backend, at, by if isinstance(by, str) else None)
    return None


def _room_fields(room: Room) -> Document:
    fields: Document = {
        "user_id": room.user_id,
        "user_name": room.user_name,
        "title": room.title,
        "model": room.model,
        "created_at": room.created_at,
        "updated_at": room.updated_at,
        "turns": room.turns,
    }
    if room.served is not None:
        fields["served"] = _served_doc(room.served)
    return fields


def _room(doc: Document) -> Room:
    # Tolerant reads: a document of the seed app's could share the collection.
    return Room(
        id=str(doc["_id"]),
        user_id=str(doc.get("user_id", "")),
        user_name=str(doc.get("user_name") or ""),
        title=str(doc.get("title") or ""),
        model=doc.get("model"),
        created_at=doc.get("created_at"),
        updated_at=doc.get("updated_at"),
        turns=int(doc.get("turns") or 0),
        served=_served(doc.get("served")),
    )


_MESSAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Message) if f.name != "id")


def _message_doc(message: Message) -> Document:
    doc = {"_id": message.id, **{name: getattr(message, name) for name in _MESSAGE_FIELDS}}
    doc["truncated"] = list(message.truncated)
    return doc


def _message(doc: Document) -> Message:
    values = {name: doc[name] for name in _MESSAGE_FIELDS if name in doc}
    values["truncated"] = tuple(values.get("truncated") or ())
    return Message(id=str(doc["_id"]), **values)


class _Collection:
    """One collection, its call deadline, and whether its indexes exist yet."""

    def __init__(self, collection: AsyncCollection[Document], seconds: float) -> None:
        self.collection = collection
        self.seconds = seconds
        self.indexed = False


class MongoRooms(_Collection):
    async def ensure_indexes(self) -> None:
        with mongo_errors(self.seconds):
            await self.collection.create_index(
                [("user_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)],
                name="user_updated",
            )
            # The placement feed: rooms whose latest turn ran somewhere since a moment.
            await self.collection.create_index(
                [("served.at", ASCENDING)], name="served_at", sparse=True
            )
        self.indexed = True

    async def get(self, room_id: str) -> Room | None:
        with mongo_errors(self.seconds):
            doc = await self.collection.find_one({"_id": room_id})
        return None if doc is None else _room(doc)

    async def get_many(self, room_ids: Sequence[str]) -> Sequence[Room]:
        if not room_ids:
            return []
        with mongo_errors(self.seconds):
            docs = await self.collection.find({"_id": {"$in": list(room_ids)}}).to_list()
        return [_room(doc) for doc in docs]

    async def open(self, rooms: Sequence[Room]) -> set[str]:
        if not rooms:
            return set()
        if not self.indexed:  # MongoDB was down at start: index before the first write
            await self.ensure_indexes()
        docs = [{"_id": r.id, **_room_fields(r)} for r in rooms]
        # Plain inserts, not upserts: one batched write instead of a lookup per room
        # (a tenth of the time on a batch of 200); an id that exists is reported back.
        with mongo_errors(self.seconds):
            try:
                await self.collection.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return _duplicates(exc, docs)
        return set()

    async def advance(self, steps: Sequence[RoomStep]) -> None:
        if not steps:
            return
        ops = []
        for step in steps:
            change: Document = {"$max": {"turns": step.turns, "updated_at": step.updated_at}}
            if step.served is not None:
                # Records are filed in the order their exchanges ended: the last one wins.
                change["$set"] = {"served": _served_doc(step.served)}
            ops.append(UpdateOne({"_id": step.room_id}, change))
        with mongo_errors(self.seconds):
            await self.collection.bulk_write(ops, ordered=False)

    async def list(self, user_id: str, *, limit: int, before: Mark | None = None) -> list[Room]:
        query: Document = {"user_id": user_id}
        if before is not None:
            at, room_id = before
            query["$or"] = [
                {"updated_at": {"$lt": at}},
                {"updated_at": at, "_id": {"$lt": room_id}},
            ]
        order = [("updated_at", DESCENDING), ("_id", DESCENDING)]
        with mongo_errors(self.seconds):
            cursor = self.collection.find(query).sort(order).limit(limit)
            return [_room(doc) async for doc in cursor]

    async def rename(self, room_id: str, title: str) -> Room | None:
        with mongo_errors(self.seconds):
            doc = await self.collection.find_one_and_update(
                {"_id": room_id},
                {"$set": {"title": title}},
                return_document=pymongo.ReturnDocument.AFTER,
            )
        return None if doc is None else _room(doc)

    async def delete(self, room_id: str) -> bool:
        with mongo_errors(self.seconds):
            result = await self.collection.delete_one({"_id": room_id})
        return result.deleted_count > 0

    async def placements(
        self, since: datetime, *, limit: int, other_than: str | None = None
    ) -> Sequence[tuple[str, Served]]:
        query: Document = {"served.at": {"$gte": since}}
        if other_than is not None:
            query["served.by"] = {"$ne": other_than}
        with mongo_errors(self.seconds):
            cursor = (
                self.collection.find(query, {"served": 1}).sort("served.at", ASCENDING).limit(limit)
            )
            docs = [doc async for doc in cursor]
        return [(str(d["_id"]), s) for d in docs if (s := _served(d.get("served"))) is not None]


class MongoMessages(_Collection):
    async def ensure_indexes(self) -> None:
        with mongo_errors(self.seconds):
            await self.collection.create_index(
                [
                    ("room_id", ASCENDING),
                    ("started_at", ASCENDING),
                    ("seq", ASCENDING),
                    ("_id", ASCENDING),
                ],
                name="room_order",
            )
            # Its forerunner, without seq (before 2026-12), would only cost writes now.
            with contextlib.suppress(OperationFailure):
                await self.collection.drop_index("room_started")
            await self.collection.create_index(
                [("user_id", ASCENDING), ("full_hash", ASCENDING)], name="user_full_hash"
            )
        self.indexed = True

    async def add(self, messages: Sequence[Message]) -> set[str]:
        if not messages:
            return set()
        if not self.indexed:  # MongoDB was down at start: index before the first write
            await self.ensure_indexes()
        docs = [_message_doc(m) for m in messages]
        with mongo_errors(self.seconds):
            try:
                await self.collection.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return _duplicates(exc, docs)  # written before (a replay): the first stands
        return set()

    async def get_many(self, ids: Collection[str]) -> list[Message]:
        if not ids:
            return []
        with mongo_errors(self.seconds):
            cursor = self.collection.find({"_id": {"$in": [*ids]}})
            return [_message(doc) async for doc in cursor]

    async def find_head(self, user_id: str, hashes: Sequence[str]) -> Message | None:
        if not hashes:
            return None
        query = {"user_id": user_id, "full_hash": {"$in": [*hashes]}, "room_id": {"$ne": None}}
        with mongo_errors(self.seconds):
            cursor = self.collection.find(query).sort("started_at", ASCENDING).limit(100)
            found = {doc["full_hash"]: _message(doc) async for doc in cursor}
        return next((found[h] for h in hashes if h in found), None)

    async def list(
        self,
        room_id: str,
        *,
        limit: int,
        after: MessageMark | None = None,
        kinds: Collection[MessageKind] = ("turn", "generate"),
    ) -> list[Message]:
        query: Document = {"room_id": room_id, "kind": {"$in": [*kinds]}}
        if after is not None:
            at, seq, message_id = after
            # A task's seq is null, which sorts before every number.
            query["$or"] = [
                {"started_at": {"$gt": at}},
                {"started_at": at, "seq": {"$gt": seq} if seq else {"$ne": None}},
                {"started_at": at, "seq": seq or None, "_id": {"$gt": message_id}},
            ]
        order = [("started_at", ASCENDING), ("seq", ASCENDING), ("_id", ASCENDING)]
        with mongo_errors(self.seconds):
            cursor = self.collection.find(query).sort(order).limit(limit)
            return [_message(doc) async for doc in cursor]

    async def delete_room(self, room_id: str) -> int:
        with mongo_errors(self.seconds):
            result = await self.collection.delete_many({"room_id": room_id})
        return result.deleted_count
