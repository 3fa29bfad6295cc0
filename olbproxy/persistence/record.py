"""Record: one finished exchange as persistence keeps it, and its line in the spool.

``record_of`` runs in the recorder's writer, never in a handler: it parses the kept
chunks once (``exchange.assemble``), classifies the exchange (a turn, an Open WebUI
background task, a generate), hashes its history and drops the chunks. A record holds
everything its message and room documents need except where it goes (room and seq),
which is decided when it is written (filing.py), so a record spooled during an outage
is filed exactly as it would have been, only later. Its id is the exchange id, given
when the request started: writing a record twice leaves one message.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from olbproxy.exchange import Exchange, assemble, last_lines
from olbproxy.persistence.history import (
    CHAT_ENDPOINTS,
    GENERATE,
    answered,
    context_hash,
    first_user_text,
    history,
    image_refs,
    merge_tool_calls,
    new_input,
    task_of,
    title_of,
)
from olbproxy.store import AnswerText, Message, MessageKind, MessageStatus, Room, Served

FORMAT = 1
# MongoDB refuses documents over 16 MiB; a pasted book must not make a record unstorable.
TEXT_LIMIT = 4 * 1024 * 1024  # bytes of UTF-8, input and answer content each
THINKING_LIMIT = 2 * 1024 * 1024
TOOL_CALLS_LIMIT = 1024 * 1024


def epoch_ms(seconds: float) -> int:
    return round(seconds * 1000)


def moment(ms: int) -> datetime:
    """Milliseconds since the epoch as MongoDB keeps them, so both stores agree."""
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)


@dataclass(slots=True)
class Record:
    """A finished exchange, ready to be filed; JSON-serialisable for the spool."""

    id: str
    kind: MessageKind
    endpoint: str
    user_id: str
    user_name: str
    status: MessageStatus
    started_at: int  # ms since the epoch
    ended_at: int
    model: str | None = None
    group: str | None = None
    backend: str | None = None
    task: str | None = None
    input: str | None = None
    input_role: str | None = None
    input_images: list[dict[str, Any]] = field(default_factory=list)  # digest and size
    answer: AnswerText | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    done_reason: str | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    http_status: int | None = None
    error: str | None = None
    placement: str | None = None  # why it went to its backend (placement.py's reasons)
    placement_key: str | None = None  # its whole prompt's exchange key (hex): next turns'
    title: str = ""
    named_room: str | None = None  # X-Room-Id or Open WebUI's chat id, checked by preflight
    opens_room: bool = False  # may start a room of its own when it continues none
    prefix_hash: str | None = None
    full_hash: str | None = None
    continues: list[str] = field(default_factory=list)  # candidate hashes, best first
    truncated: list[str] = field(default_factory=list)
    by: str | None = None  # the proxy process that recorded it (Served.by)

    def line(self) -> bytes:
        data = {"v": FORMAT, **dataclasses.asdict(self)}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_line(cls, line: bytes) -> Record:
        """The record of one spool line; ``ValueError`` if it is not one."""
        data = json.loads(line)
        if not isinstance(data, dict) or data.pop("v", None) != FORMAT:
            raise ValueError("not a spool record of this version")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def room(self, room_id: str) -> Room:
        return Room(
            id=room_id,
            user_id=self.user_id,
            user_name=self.user_name,
            title=self.title,
            model=self.model,
            created_at=moment(self.started_at),
            updated_at=moment(self.ended_at),
            turns=0,
        )

    def served(self) -> Served | None:
        """Where this exchange ran, for its room: what the next turn is placed by."""
        if self.placement_key is None or self.backend is None or self.status == "error":
            return None
        return Served(self.placement_key, self.backend, moment(self.ended_at), self.by)

    def message(self, room_id: str | None, seq: int | None) -> Message:
        return Message(
            id=self.id,
            user_id=self.user_id,
            kind=self.kind,
            endpoint=self.endpoint,
            status=self.status,
            started_at=moment(self.started_at),
            ended_at=moment(self.ended_at),
            room_id=room_id,
            seq=seq,
            user_name=self.user_name,
            task=self.task,
            model=self.model,
            group=self.group,
            backend=self.backend,
            input=self.input,
            input_role=self.input_role,
            input_images=self.input_images,
            answer=self.answer,
            counters=self.counters,
            done_reason=self.done_reason,
            ttft_ms=self.ttft_ms,
            duration_ms=self.duration_ms,
            http_status=self.http_status,
            error=self.error,
            placement=self.placement,
            prefix_hash=self.prefix_hash,
            full_hash=self.full_hash,
            truncated=tuple(self.truncated),
        )


def _capped(text: str, limit: int, name: str, truncated: list[str]) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    truncated.append(name)
    return data[:limit].decode(errors="ignore")


def _final_context(exchange: Exchange) -> Any:
    # /api/generate puts the context on its final object, the last line it sent.
    for line in last_lines(exchange.chunks):
        if b'"context"' in line:
            try:
                return json.loads(line).get("context")
            except (ValueError, AttributeError):
                return None
    return None


def _status(exchange: Exchange, stream_error: str | None) -> tuple[MessageStatus, str | None]:
    if exchange.outcome == "cancelled":
        return "cancelled", exchange.error
    if exchange.outcome == "done" and stream_error is None and exchange.status < 400:
        return "done", None
    return "error", exchange.error or stream_error or f"HTTP {exchange.status}"


def record_of(exchange: Exchange, *, store_content: bool) -> Record:
    """The record of a finished exchange; parses its chunks (once, off the request path)."""
    body = exchange.body
    if body is None:
        body = orjson.loads(exchange.request_body) if exchange.request_body else {}
    endpoint = exchange.endpoint
    answer = assemble(exchange)
    status, error = _status(exchange, answer.error)
    tool_calls = merge_tool_calls(answer.tool_calls)
    has_answer = bool(answer.content or answer.thinking or tool_calls)
    task = task_of(endpoint, body, stream=exchange.stream)
    kind: MessageKind = "task" if task else ("generate" if endpoint == GENERATE else "turn")

    prefix = full = None
    continues: list[str] = []
    if endpoint in CHAT_ENDPOINTS:
        hashes = history(body.get("messages") or [])
        prefix, continues = hashes.prefix, list(hashes.candidates)
        if has_answer:
            full = answered(hashes, answer.content, tool_calls)
    else:
        prefix = context_hash(body.get("context"))
        continues = [prefix] if prefix else []
        full = context_hash(_final_context(exchange)) if has_answer else None
    # Editor autocompletion (raw or fill-in-the-middle generate) would bury real
    # conversations under hundreds of one-line rooms: recorded, but in no room.
    completion = endpoint == GENERATE and bool(body.get("raw") or body.get("suffix"))

    truncated: list[str] = []
    role, text = new_input(endpoint, body)
    stored_answer: AnswerText | None = None
    title = ""
    if store_content:
        calls = tool_calls
        if len(json.dumps(calls, ensure_ascii=False).encode()) > TOOL_CALLS_LIMIT:
            calls, truncated = [], ["answer.tool_calls"]
        stored_answer = {
            "content": _capped(answer.content, TEXT_LIMIT, "answer.content", truncated),
            "thinking": _capped(answer.thinking, THINKING_LIMIT, "answer.thinking", truncated),
            "tool_calls": calls,
        }
        text = _capped(text, TEXT_LIMIT, "input", truncated)
        title = title_of(first_user_text(endpoint, body))
    started = epoch_ms(exchange.started_at)
    duration = exchange.duration
    ended = started + epoch_ms(duration) if duration is not None else started
    if not title:  # content not stored, or nothing to title from
        title = f"{exchange.model or 'chat'} · {moment(started):%Y-%m-%d %H:%M} UTC"
    ttft = exchange.ttft
    placed = exchange.placed
    return Record(
        id=exchange.id,
        kind=kind,
        endpoint=endpoint,
        user_id=exchange.user,
        user_name=exchange.user_name,
        status=status,
        started_at=started,
        ended_at=ended,
        model=exchange.model,
        group=exchange.group,
        backend=exchange.backend,
        task=task,
        input=text if store_content else None,
        input_role=role,
        input_images=image_refs(endpoint, body) if store_content else [],
        answer=stored_answer,
        counters=answer.counters
        or {k: v for k, v in exchange.counters.items() if k != "done_reason"},
        done_reason=answer.done_reason,
        ttft_ms=None if ttft is None else round(ttft * 1000, 3),
        duration_ms=None if duration is None else round(duration * 1000, 3),
        http_status=exchange.status or None,
        error=error,
        placement=(placed.reason or None) if placed is not None else None,
        placement_key=placed.key_hex() if placed is not None else None,
        title=title,
        named_room=exchange.room_id,
        opens_room=kind != "task" and has_answer and not completion,
        prefix_hash=prefix,
        full_hash=full,
        continues=continues,
        truncated=truncated,
    )
