"""The MongoDB store: pymongo's ``AsyncMongoClient``. This module, mongo_rooms.py (rooms
and messages) and mongo_audit.py (the audit trail) are the only ones that import pymongo.

Collections in ``store.database`` (the seed's URI names it: ``.../gpt``):

* ``users``: ``{_id, username, username_key, password_hash, role, groups, disabled,
  created_at, last_login_at, token_epoch}``, unique index on ``username_key``. The index is partial
  (only documents that have a ``username_key``) because the seed app's own users may
  live in the same collection: ``{_id: ObjectId, username, password}``. Such a document
  is invisible until ``olbproxy user import`` adopts it in place (same ``_id``; the seed's
  ``password`` field is left alone so the old app keeps working).
* ``api_keys``: ``{_id: key id, user_id, secret_hash, label, front_end, groups,
  created_at, revoked_at}``.
* ``rooms``: ``{_id, user_id, user_name, title, model, created_at, updated_at, turns}``,
  index ``(user_id, updated_at desc, _id desc)`` for the newest-first listing.
* ``messages``: ``{_id: exchange id, room_id, seq, user_id, user_name, kind, task,
  endpoint, model, group, backend, input, input_role, answer, counters, done_reason,
  ttft_ms, duration_ms, status, http_status, error, started_at, ended_at, prefix_hash,
  full_hash, truncated}``, indexes ``(room_id, started_at, _id)`` and
  ``(user_id, full_hash)`` (continuations). The seed app's own ``rooms`` and
  ``messages`` documents may share these collections: every query filters on fields
  they do not have (string ``user_id``/``room_id``), and reading tolerates missing fields.
* ``audit``: admin actions (mongo_audit.py).

Server selection is bounded by ``store.timeout`` so an outage answers 503 in seconds
instead of hanging a login for pymongo's default 30 s. Conversation reads and writes
run under one client-side deadline of ``store.timeout`` each (``pymongo.timeout``), so
a server that accepts connections but never answers cannot hold the recorder either.
While MongoDB is down, the log says so in one short line at most once a minute
(``Outage``), not with pymongo's topology description on every failed request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    ConfigurationError,
    DuplicateKeyError,
)

from olbproxy.errors import ConfigError, Conflict, Unavailable
from olbproxy.settings import StoreSettings
from olbproxy.store import (
    ApiKey,
    Audit,
    Keys,
    Messages,
    Rooms,
    SeedUser,
    User,
    UserChanges,
    Users,
)
from olbproxy.store.mongo_audit import MongoAudit
from olbproxy.store.mongo_errors import mongo_errors, short
from olbproxy.store.mongo_rooms import Document, MongoMessages, MongoRooms

log = logging.getLogger("olbproxy.store")


# While MongoDB is down every first use of a key or a login fails: say so at most this
# often (with how many failures were not reported), not once per request.
REPORT_EVERY = 60.0


class Outage:
    """mongo_errors() for users and keys, which also says "MongoDB is unreachable" in the
    log in one short line, at most every ``every`` seconds."""

    def __init__(
        self, every: float = REPORT_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every = every
        self.clock = clock
        self._reported: float | None = None
        self._held = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        try:
            with mongo_errors():
                yield
        except Unavailable as exc:
            self._report(exc.__cause__ or exc)
            raise

    def _report(self, exc: BaseException) -> None:
        now = self.clock()
        if self._reported is not None and now - self._reported < self.every:
            self._held += 1
            return
        more = f" ({self._held} more failures since the last report)" if self._held else ""
        self._reported, self._held = now, 0
        log.warning("MongoDB is unreachable: %s%s", short(exc), more)


def client(uri: str, timeout: float) -> AsyncMongoClient[Document]:
    ms = int(timeout * 1000)
    try:
        return AsyncMongoClient(
            uri,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            tz_aware=True,
            appname="olbproxy",
        )
    except ConfigurationError as exc:
        raise ConfigError(f"store.mongodb_uri: {exc}") from None


def _oid(user_id: str) -> ObjectId | str:
    # Seed users keep their ObjectId; ours are 24 hex digits too, stored the same way.
    return ObjectId(user_id) if ObjectId.is_valid(user_id) else user_id


def _groups(value: Any) -> frozenset[str] | None:
    return None if value is None else frozenset(str(g) for g in value)


def _user(doc: Document) -> User:
    return User(
        id=str(doc["_id"]),
        username=doc["username"],
        username_key=doc["username_key"],
        password_hash=doc.get("password_hash", ""),
        role="admin" if doc.get("role") == "admin" else "user",
        groups=_groups(doc.get("groups")),
        disabled=bool(doc.get("disabled", False)),
        created_at=doc.get("created_at"),
        last_login_at=doc.get("last_login_at"),
        token_epoch=int(doc.get("token_epoch") or 0),
    )


def _user_fields(user: User) -> Document:
    return {
        "username": user.username,
        "username_key": user.username_key,
        "password_hash": user.password_hash,
        "role": user.role,
        "groups": None if user.groups is None else sorted(user.groups),
        "disabled": user.disabled,
        "created_at": user.created_at,
        "last_login_at": user.last_login_at,
        "token_epoch": user.token_epoch,
    }


def _key(doc: Document) -> ApiKey:
    return ApiKey(
        id=doc["_id"],
        user_id=doc["user_id"],
        secret_hash=doc["secret_hash"],
        label=doc.get("label", ""),
        front_end=bool(doc.get("front_end", False)),
        groups=_groups(doc.get("groups")),
        created_at=doc.get("created_at"),
        revoked_at=doc.get("revoked_at"),
    )


# Users are read by name or id; the password hash is needed only by login.
_OURS = {"username_key": {"$type": "string"}}


class MongoUsers:
    def __init__(self, collection: AsyncCollection[Document], reachable: Outage) -> None:
        self.collection = collection
        self.reachable = reachable
        self.indexed = False

    async def ensure_indexes(self) -> None:
        with self.reachable():
            await self.collection.create_index(
                [("username_key", ASCENDING)],
                unique=True,
                partialFilterExpression=_OURS,
                name="username_key_unique",
            )
        self.indexed = True

    async def add(self, user: User) -> None:
        if not self.indexed:  # uniqueness rests on the index: never insert without it
            await self.ensure_indexes()
        doc = {"_id": _oid(user.id), **_user_fields(user)}
        with self.reachable():
            try:
                await self.collection.insert_one(doc)
                return
            except DuplicateKeyError as exc:
                if "_id" not in (exc.details or {}).get("keyPattern", {}):
                    raise Conflict(f"username '{user.username}' is taken") from None
            # The id is taken: a seed user being imported in place is completed, once.
            result = await self.collection.update_one(
                {"_id": doc["_id"], "username_key": {"$exists": False}},
                {"$set": _user_fields(user)},
            )
        if result.matched_count == 0:
            raise Conflict(f"a user with id {user.id} exists already")

    async def get(self, user_id: str) -> User | None:
        with self.reachable():
            doc = await self.collection.find_one({"_id": _oid(user_id), **_OURS})
        return None if doc is None else _user(doc)

    async def find(self, username_key: str) -> User | None:
        with self.reachable():
            doc = await self.collection.find_one({"username_key": username_key})
        return None if doc is None else _user(doc)

    async def get_many(self, user_ids: Collection[str]) -> list[User]:
        if not user_ids:
            return []
        with self.reachable():
            cursor = self.collection.find({"_id": {"$in": [_oid(i) for i in user_ids]}, **_OURS})
            return [_user(doc) async for doc in cursor]

    async def list(self) -> list[User]:
        with self.reachable():
            cursor = self.collection.find(_OURS).sort("username_key", ASCENDING)
            return [_user(doc) async for doc in cursor]

    async def update(self, user_id: str, changes: UserChanges) -> bool:
        fields: Document = dict(changes)
        if "groups" in fields and fields["groups"] is not None:
            fields["groups"] = sorted(fields["groups"])
        with self.reachable():
            result = await self.collection.update_one(
                {"_id": _oid(user_id), **_OURS}, {"$set": fields}
            )
        return result.matched_count > 0


class MongoKeys:
    def __init__(self, collection: AsyncCollection[Document], reachable: Outage) -> None:
        self.collection = collection
        self.reachable = reachable

    async def ensure_indexes(self) -> None:
        with self.reachable():
            await self.collection.create_index([("user_id", ASCENDING)], name="user_id")

    async def add(self, key: ApiKey) -> None:
        doc = {
            "_id": key.id,
            "user_id": key.user_id,
            "secret_hash": key.secret_hash,
            "label": key.label,
            "front_end": key.front_end,
            "groups": None if key.groups is None else sorted(key.groups),
            "created_at": key.created_at,
            "revoked_at": key.revoked_at,
        }
        with self.reachable():
            try:
                await self.collection.insert_one(doc)
            except DuplicateKeyError:
                raise Conflict(f"an API key with id {key.id} exists already") from None

    async def get(self, key_id: str) -> ApiKey | None:
        with self.reachable():
            doc = await self.collection.find_one({"_id": key_id})
        return None if doc is None else _key(doc)

    async def get_many(self, key_ids: Collection[str]) -> list[ApiKey]:
        if not key_ids:
            return []
        with self.reachable():
            return [_key(doc) async for doc in self.collection.find({"_id": {"$in": [*key_ids]}})]

    async def list(self, user_id: str | None = None) -> list[ApiKey]:
        query = {} if user_id is None else {"user_id": user_id}
        with self.reachable():
            cursor = self.collection.find(query).sort([("created_at", ASCENDING), ("_id", 1)])
            return [_key(doc) async for doc in cursor]

    async def revoke(self, key_id: str, at: datetime) -> bool:
        with self.reachable():
            result = await self.collection.update_one(
                {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": at}}
            )
        return result.modified_count > 0


class MongoStore:
    """Users, API keys and conversations in MongoDB; one client (connection pool)."""

    def __init__(self, settings: StoreSettings) -> None:
        assert settings.mongodb_uri, "open_store checks this"
        self.client = client(settings.mongodb_uri, settings.timeout)
        self.seconds = settings.timeout
        db = self.client[settings.database]
        self.outage = Outage()
        self._users = MongoUsers(db["users"], self.outage)
        self._keys = MongoKeys(db["api_keys"], self.outage)
        self._audit = MongoAudit(db["audit"], settings.timeout)
        self._rooms = MongoRooms(db["rooms"], settings.timeout)
        self._messages = MongoMessages(db["messages"], settings.timeout)

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

    async def ping(self) -> None:
        with mongo_errors(self.seconds):
            await self.client.admin.command("ping")

    async def start(self) -> None:
        try:
            await self._users.ensure_indexes()
            await self._keys.ensure_indexes()
            await self._rooms.ensure_indexes()
            await self._messages.ensure_indexes()
            await self._audit.ensure_indexes()
        except Unavailable:
            # Serve anyway: cached identities keep working, and the users index is
            # created before the first insert (MongoUsers.add) once MongoDB answers.
            log.warning("MongoDB did not answer at start; indexes will be created later")

    async def close(self) -> None:
        await self.client.close()


async def read_seed_users(
    uri: str,
    database: str,
    collection: str,
    *,
    username_field: str = "username",
    password_field: str = "password",
    seconds: float = 5.0,
) -> list[SeedUser]:
    """The seed app's users (bcryptjs hashes kept as they are), for ``olbproxy user import``.

    Documents this store has already adopted (they carry ``username_key``) are skipped,
    so importing from the store's own ``users`` collection is safe to repeat.
    """
    seed = client(uri, seconds)
    try:
        with Outage()():
            cursor = seed[database][collection].find({"username_key": {"$exists": False}})
            docs = [doc async for doc in cursor]
    finally:
        await seed.close()
    users = []
    for doc in docs:
        name, secret = doc.get(username_field), doc.get(password_field)
        if not isinstance(name, str) or not isinstance(secret, str):
            log.warning(
                "seed user %s: no %s or %s; skipped", doc["_id"], username_field, password_field
            )
            continue
        created = doc.get("createdAt", doc.get("created_at"))
        if not isinstance(created, datetime) and isinstance(doc["_id"], ObjectId):
            created = doc["_id"].generation_time  # an ObjectId holds its creation time
        users.append(SeedUser(str(doc["_id"]), name, secret, created))
    return users
