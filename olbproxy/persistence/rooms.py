"""Rooms: the conversations API for web front-ends, and the ownership check of named rooms.

    GET    /api/rooms?limit=&cursor=                 the caller's rooms, newest first
    GET    /api/rooms/{id}/messages?limit=&cursor=   one room's turns, oldest first
    PATCH  /api/rooms/{id}   {"title": "..."}        rename
    DELETE /api/rooms/{id}                           the room and its messages

A user sees only their own rooms, admins included: conversations are private, and an
admin who must look into one has the database. Someone else's room answers 403, a room
that does not exist 404. Pages are cut with opaque cursors (``next_cursor``).

``preflight`` runs before a chat or generate request is placed on a backend: a room
named with ``X-Room-Id`` (or Open WebUI's chat id from a trusted front-end) must be the
caller's or new. The owner comes from memory when known; otherwise from one point
lookup bounded by ``OWNER_LOOKUP_SECONDS``. When the database cannot say (down, slow,
or already known to be down), the request goes ahead: persistence never fails a
stream, and the writer checks again when it files the record (filing.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from olbproxy.auth.principal import Principal, principal_of
from olbproxy.body import read_json
from olbproxy.edge import MATCH, Route, route
from olbproxy.errors import BadRequest, Forbidden, NotFound, ProxyError
from olbproxy.exchange import Exchange
from olbproxy.persistence.history import RECORDED
from olbproxy.persistence.record import moment
from olbproxy.persistence.recording import Recording
from olbproxy.store import Mark, Message, MessageKind, MessageMark, Room, Store

log = logging.getLogger("olbproxy.persistence.rooms")

T = TypeVar("T")

ROOM_HEADER = "X-Room-Id"
ROOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
OWNER_LOOKUP_SECONDS = 0.5
TITLE_MAX = 200
ROOMS_PAGE = (50, 200)  # default and largest ?limit=
MESSAGES_PAGE = (100, 500)
_BODY_LIMIT = 64 * 1024
_UNIX_EPOCH = datetime.fromtimestamp(0, UTC)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def room_json(room: Room) -> dict[str, Any]:
    return {
        "id": room.id,
        "title": room.title,
        "model": room.model,
        "created_at": iso(room.created_at),
        "updated_at": iso(room.updated_at),
        "turns": room.turns,
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "seq": message.seq,
        "kind": message.kind,
        "task": message.task,
        "endpoint": message.endpoint,
        "model": message.model,
        "backend": message.backend,
        "placement": message.placement,
        "input": message.input,
        "input_role": message.input_role,
        "input_images": message.input_images,
        "answer": message.answer,
        "counters": message.counters or {},
        "done_reason": message.done_reason,
        "status": message.status,
        "error": message.error,
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "started_at": iso(message.started_at),
        "ended_at": iso(message.ended_at),
    }


def encode_cursor(mark: Mark | MessageMark) -> str:
    at, *rest = mark
    text = "|".join([str(round(at.timestamp() * 1000)), *map(str, rest)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Mark:
    return _decoded(text, 2, _room_mark)


def decode_message_cursor(text: str) -> MessageMark:
    return _decoded(text, 3, _message_mark)


def _room_mark(fields: list[str]) -> Mark:
    millis, ident = fields
    return moment(int(millis)), ident


def _message_mark(fields: list[str]) -> MessageMark:
    millis, position, ident = fields
    seq = int(position)
    if not 0 <= seq < 1 << 63:  # a position we never gave, or one MongoDB cannot hold
        raise ValueError(position)
    return moment(int(millis)), seq, ident


def _decoded(text: str, parts: int, mark: Callable[[list[str]], T]) -> T:
    """``mark`` of the cursor's ``parts`` fields; anything unreadable is a 400."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        fields = raw.split("|", parts - 1)
        if not fields[-1]:
            raise ValueError(raw)
        return mark(fields)  # a wrong number of fields is a ValueError too
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        raise BadRequest("invalid cursor: pass next_cursor from the previous page as is") from None


def page_size(request: web.Request, bounds: tuple[int, int]) -> int:
    default, largest = bounds
    raw = request.query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= largest:
        raise BadRequest(f"limit must be a whole number from 1 to {largest}")
    return int(raw)


def room_id_of(value: str, where: str) -> str:
    if not ROOM_ID.fullmatch(value):
        raise BadRequest(
            f"{where} must be 1-128 characters: letters, digits and . _ : - "
            "(starting with a letter or digit)"
        )
    return value


class RoomsApi:
    """The rooms routes, and the ownership check of named rooms."""

    def __init__(self, store: Store, recorder: Recording) -> None:
        self.store = store
        self.recorder = recorder
        self.filing = recorder.filing

    def routes(self) -> list[Route]:
        return [
            *route("/api/rooms", "GET", self.list_rooms),
            *route("/api/rooms/{room}/messages", "GET", self.list_messages),
            *route("/api/rooms/{room}", ("PATCH", "DELETE"), self.change_room),
        ]

    # -- the preflight check (OllamaApi.preflight) ----------------------------------------

    async def preflight(self, request: web.Request, exchange: Exchange) -> None:
        if exchange.endpoint not in RECORDED:
            return
        principal = principal_of(request)
        header = request.headers.get(ROOM_HEADER)
        if header is not None:
            named: str | None = room_id_of(header.strip(), ROOM_HEADER)
        else:
            named = principal.room_hint
            if named is not None and not ROOM_ID.fullmatch(named):
                log.info("ignoring an Open WebUI chat id that is not a room id: %r", named)
                named = None
        if named is None:
            return
        owner = await self._owner(named)
        if owner is not None and owner != principal.id:
            raise Forbidden(f"room {named} belongs to another user")
        exchange.room_id = named

    async def _owner(self, room_id: str) -> str | None:
        owner = self.filing.owner(room_id)
        if owner is not None or self.recorder.spooling:
            return owner  # known; or the database is known to be down: don't wait for it
        try:
            async with asyncio.timeout(OWNER_LOOKUP_SECONDS):
                room = await self.store.rooms.get(room_id)
        except (TimeoutError, ProxyError) as exc:
            log.info("owner of room %s unknown (%s); the writer checks it later", room_id, exc)
            return None
        if room is None:
            return None
        self.filing.learn_owner(room.id, room.user_id)
        return room.user_id

    # -- HTTP -----------------------------------------------------------------------------

    async def list_rooms(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        limit = page_size(request, ROOMS_PAGE)
        cursor = request.query.get("cursor")
        before = decode_cursor(cursor) if cursor else None
        rooms = await self.store.rooms.list(principal.id, limit=limit + 1, before=before)
        following = None
        if len(rooms) > limit:
            rooms = rooms[:limit]
            last = rooms[-1]
            following = encode_cursor((last.updated_at or _UNIX_EPOCH, last.id))
        return web.json_response({"rooms": [room_json(r) for r in rooms], "next_cursor": following})

    async def list_messages(self, request: web.Request) -> web.StreamResponse:
        room = await self._own_room(request)
        limit = page_size(request, MESSAGES_PAGE)
        cursor = request.query.get("cursor")
        after = decode_message_cursor(cursor) if cursor else None
        kinds: tuple[MessageKind, ...] = ("turn", "generate")
        if request.query.get("tasks", "").lower() in ("1", "true", "yes"):
            kinds = (*kinds, "task")
        messages = await self.store.messages.list(
            room.id, limit=limit + 1, after=after, kinds=kinds
        )
        following = None
        if len(messages) > limit:
            messages = messages[:limit]
            following = encode_cursor(messages[-1].mark)
        return web.json_response(
            {
                "room": room_json(room),
                "messages": [message_json(m) for m in messages],
                "next_cursor": following,
            }
        )

    async def change_room(self, request: web.Request) -> web.StreamResponse:
        room = await self._own_room(request)
        if request.method == "DELETE":
            # Messages first: a failure in between leaves a room to delete again,
            # never messages nobody can reach.
            await self.store.messages.delete_room(room.id)
            await self.store.rooms.delete(room.id)
            self.recorder.forget(room.id)
            return web.Response(status=204)
        _, data = await read_json(request, _BODY_LIMIT)
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            raise BadRequest("title is required: a non-empty string")
        title = " ".join(title.split())
        if len(title) > TITLE_MAX:
            raise BadRequest(f"title is too long (at most {TITLE_MAX} characters)")
        renamed = await self.store.rooms.rename(room.id, title)
        if renamed is None:
            raise NotFound(f"room {room.id} not found")
        return web.json_response(room_json(renamed))

    async def _own_room(self, request: web.Request) -> Room:
        room_id = request[MATCH].params["room"]
        room = await self.store.rooms.get(room_id)
        if room is None:
            raise NotFound(f"room {room_id} not found")
        if not owns(principal_of(request), room):
            raise Forbidden(f"room {room_id} belongs to another user")
        return room


def owns(principal: Principal, room: Room) -> bool:
    return room.user_id == principal.id
