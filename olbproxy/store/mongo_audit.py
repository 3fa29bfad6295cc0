"""MongoDB audit trail: the admin actions audit.py records, in the collection ``audit``.

Entries are only ever inserted and listed. The listing is bounded and newest first,
the way ``olbproxy audit`` shows the recent past.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from olbproxy.store import AuditEntry
from olbproxy.store.mongo_errors import mongo_errors
from olbproxy.store.mongo_rooms import Document


class MongoAudit:
    """``audit``: ``{_id, at, actor, via, address, action, target, users, detail}``, indexed
    by ``at`` (newest first) and by ``users`` (``olbproxy audit --user``)."""

    def __init__(self, collection: AsyncCollection[Document], seconds: float) -> None:
        self.collection = collection
        self.seconds = seconds

    async def ensure_indexes(self) -> None:
        with mongo_errors(self.seconds):
            await self.collection.create_index([("at", DESCENDING)], name="at")
            await self.collection.create_index([("users", ASCENDING), ("at", DESCENDING)])

    async def add(self, entry: AuditEntry) -> None:
        doc = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
        doc["_id"] = doc.pop("id")
        doc["users"], doc["detail"] = list(entry.users), dict(entry.detail)
        with mongo_errors(self.seconds):
            await self.collection.insert_one(doc)

    async def list(
        self, *, since: datetime | None = None, user: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        query: Document = {}
        if since is not None:
            query["at"] = {"$gte": since}
        if user is not None:
            query["users"] = user
        with mongo_errors(self.seconds):
            cursor = self.collection.find(query).sort([("at", DESCENDING), ("_id", DESCENDING)])
            docs = await cursor.limit(limit).to_list()
        return [
            AuditEntry(
                id=str(d["_id"]),
                at=d["at"],
                actor=d.get("actor", ""),
                via=d.get("via", ""),
                address=d.get("address", ""),
                action=d.get("action", ""),
                target=d.get("target", ""),
                users=tuple(d.get("users") or ()),
                detail=d.get("detail") or {},
            )
            for d in docs
        ]
