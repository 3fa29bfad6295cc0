"""Persistence: what olbproxy keeps, behind protocols split by noun, and two backends.

    Store                      the whole persistence layer, opened by ``backends.open_store``
    ├── users: Users           accounts (username, password hash, role, groups)
    ├── keys: Keys             API keys (hashed; revocable)
    ├── rooms: Rooms           conversations: consecutive turns of one user (persistence/)
    ├── messages: Messages     one per recorded exchange: a turn, a background task, a generate
    └── audit: Audit           admin actions: who did what to whom, when, from where (audit.py)

``store/mongo.py`` (pymongo's ``AsyncMongoClient``; the only module that imports
pymongo) is the real one; ``store/memory.py`` keeps everything in the process for
``olbproxy demo`` and for tests of routing alone. Both raise ``Conflict`` when a
unique name is taken and ``Unavailable`` (503) when the database does not answer;
the conversation nouns raise a plain ``ProxyError`` when the database answers but
refuses a write, so the recorder can tell an outage from a record it must set aside.
Writes of rooms and messages are idempotent: replaying a record changes nothing twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypedDict

from olbproxy.auth.principal import Role


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
    # Tokens carry the epoch they were issued in; a password change raises it, which
    # revokes every token issued before (auth/tokens.py).
    token_epoch: int = 0


class UserChanges(TypedDict, total=False):
    password_hash: str
    token_epoch: int
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


MessageKind = Literal["turn", "task", "generate"]
MessageStatus = Literal["done", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class Served:
    """Where a room's latest turn ran: what placement sends the next turn back to."""

    key: str  # the exchange key of that turn's whole prompt (prompt.Prompt.key, hex)
    backend: str  # the instance that answered it (host:port)
    at: datetime  # when it ended
    # The proxy process that recorded it (its instance id): the placement feed reads
    # only other processes' placements, since a proxy knows its own already.
    by: str | None = None


@dataclass(frozen=True, slots=True)
class Room:
    """A room (a conversation): consecutive turns of one user, titled from its first message."""

    id: str
    user_id: str
    user_name: str = ""
    title: str = ""
    model: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    turns: int = 0
    served: Served | None = None


class AnswerText(TypedDict):
    content: str
    thinking: str
    tool_calls: list[Any]


@dataclass(frozen=True, slots=True)
class Message:
    """One recorded exchange: what was asked, what was answered, how it went."""

    id: str  # the exchange id, given when the request started: replays insert nothing twice
    user_id: str
    kind: MessageKind
    endpoint: str
    status: MessageStatus
    started_at: datetime
    ended_at: datetime
    room_id: str | None = None
    seq: int | None = None  # position among the room's turns (None for background tasks)
    user_name: str = ""
    task: str | None = None  # the kind of background task (title, tags, follow_up, ...)
    model: str | None = None
    group: str | None = None
    backend: str | None = None
    input: str | None = None  # None when store.store_content is false
    input_role: str | None = None
    # Images of the input as references ({"digest", "size"}), never their bytes.
    input_images: list[dict[str, Any]] = field(default_factory=list)
    answer: AnswerText | None = None  # None when store.store_content is false
    counters: dict[str, Any] | None = None
    done_reason: str | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    http_status: int | None = None
    error: str | None = None
    placement: str | None = None  # why it went to its backend (placement.py's reasons)
    prefix_hash: str | None = None  # the history before the new input (history.py)
    full_hash: str | None = None  # the history with the answer: what the next turn continues
    truncated: tuple[str, ...] = ()  # fields cut to fit a MongoDB document

    @property
    def mark(self) -> MessageMark:
        """Where it stands in its room's listing (``MessageMark``)."""
        return (self.started_at, self.seq or 0, self.id)


@dataclass(frozen=True, slots=True)
class RoomStep:
    """A room's progress after a write: turns and updated_at only ever grow (``$max``)."""

    room_id: str
    turns: int
    updated_at: datetime
    served: Served | None = None  # the latest turn's placement, when it has one


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action (audit.py): who did what to whom, when, and from where."""

    id: str
    at: datetime
    actor: str  # the admin's username; for the command line, the OS user who ran it
    via: str  # cli, or how the admin authenticated (token, key, basic, trusted, open)
    address: str  # the client's address; for the command line, the host it ran on
    action: str  # user.add, user.disable, key.create, key.revoke, model.pull, ...
    target: str  # the user, key id or model acted on
    # username_key of the actor and of the user the action concerns: `audit --user`.
    users: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)  # role, groups, label, ...


# Where a page of rooms ends: (updated_at, id) of its last room.
Mark = tuple[datetime, str]
# Where a page of a room's messages ends: (started_at, seq, id) of its last message.
# MongoDB keeps milliseconds, and a scripted client's turns can start in the same one:
# seq keeps them in the room's order (0 for a background task, which has none).
MessageMark = tuple[datetime, int, str]


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


class Rooms(Protocol):
    async def get(self, room_id: str) -> Room | None: ...

    async def get_many(self, room_ids: Sequence[str]) -> Sequence[Room]:
        """The rooms among these ids that exist, in any order: one read for a batch."""

    async def open(self, rooms: Sequence[Room]) -> set[str]:
        """Insert each room whose id is not taken yet; an existing room is left as it is.
        Returns the ids that were taken already."""

    async def advance(self, steps: Sequence[RoomStep]) -> None:
        """Raise each room's turns and updated_at to at least the step's values."""

    async def list(self, user_id: str, *, limit: int, before: Mark | None = None) -> list[Room]:
        """The user's rooms, newest first by (updated_at, id), strictly after ``before``."""

    async def rename(self, room_id: str, title: str) -> Room | None: ...

    async def delete(self, room_id: str) -> bool: ...

    async def placements(
        self, since: datetime, *, limit: int, other_than: str | None = None
    ) -> Sequence[tuple[str, Served]]:
        """(room id, placement) of rooms whose latest placement is from ``since`` on,
        oldest first, not recorded by ``other_than``: what other proxies' turns ran
        where (placement feed)."""


class Messages(Protocol):
    async def add(self, messages: Sequence[Message]) -> set[str]:
        """Insert; the ids that were there already (left unchanged) are returned."""

    async def get_many(self, ids: Collection[str]) -> list[Message]: ...

    async def find_head(self, user_id: str, hashes: Sequence[str]) -> Message | None:
        """The user's message in a room whose full_hash comes first in ``hashes``."""

    async def list(
        self,
        room_id: str,
        *,
        limit: int,
        after: MessageMark | None = None,
        kinds: Collection[MessageKind] = ("turn", "generate"),
    ) -> list[Message]:
        """The room's messages in ``MessageMark`` order, strictly after ``after``."""

    async def delete_room(self, room_id: str) -> int: ...


class Audit(Protocol):
    async def add(self, entry: AuditEntry) -> None: ...

    async def list(
        self, *, since: datetime | None = None, user: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        """Newest first; ``user`` is a username_key the entry must concern."""


class Store(Protocol):
    @property
    def users(self) -> Users: ...

    @property
    def keys(self) -> Keys: ...

    @property
    def rooms(self) -> Rooms: ...

    @property
    def messages(self) -> Messages: ...

    @property
    def audit(self) -> Audit: ...

    async def start(self) -> None:
        """Prepare (indexes); a database that does not answer yet is logged, not fatal."""

    async def ping(self) -> None:
        """Return once the database answers; ``Unavailable`` when it does not."""

    async def close(self) -> None: ...
