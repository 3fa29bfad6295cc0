"""Exchange: the record of one proxied request, and what is read from it afterwards.

The relay only appends the bytes it forwards to ``Exchange.chunks``; nothing is
parsed while tokens flow. Once the stream has ended, ``final_counters`` reads the
last object (Ollama puts all counters on the final ``done`` line) and ``assemble``
rebuilds the whole answer for persistence, from native NDJSON, OpenAI SSE or a
single JSON document alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from olbproxy.errors import Shape, shape_of
from olbproxy.prompt import Prompt

Outcome = Literal["pending", "done", "cancelled", "error"]

COUNTER_FIELDS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def new_id() -> str:
    # Time-ordered (like uuid7) so records sort by creation. The 80 bits after the time
    # come from the OS's cryptographic source: a room opens under the id of its first
    # exchange, so nobody may guess the id another user's next room will have.
    return f"{time.time_ns() // 1_000_000:012x}{_RANDOM.take()}"


class _Random:
    """The OS's cryptographic bytes, read 4 KiB at a time (one ``getrandom`` call per
    410 ids instead of one per request), ten bytes as hex per id; each byte is used
    once. A child forked after a read starts with none: it must not reuse its parent's."""

    SIZE = 10  # bytes per id
    BATCH = 410  # ids per read

    def __init__(self) -> None:
        self.hex = ""
        self.at = 0

    def take(self) -> str:
        at = self.at
        if at >= len(self.hex):
            self.hex, at = os.urandom(self.SIZE * self.BATCH).hex(), 0
        self.at = at + 2 * self.SIZE
        return self.hex[at : at + 2 * self.SIZE]

    def forget(self) -> None:
        self.hex, self.at = "", 0


_RANDOM = _Random()
os.register_at_fork(after_in_child=_RANDOM.forget)


@dataclass(slots=True)
class Placed:
    """Where placement put an exchange, and why (placement.py)."""

    reason: str  # sticky, prefix, resident, round_robin, cold, fallback_busy
    prompt: Prompt | None = field(default=None, repr=False)
    cached_tokens: float = 0.0  # of the prompt, expected to be cached where it went
    # The prompt's key as a frame carried it to the recording process (frame.py),
    # which has no Prompt.
    recorded_key: str | None = None

    def key_hex(self) -> str | None:
        """The key of the whole prompt (the next turn's placement looks it up)."""
        return self.prompt.key.hex() if self.prompt is not None else self.recorded_key


@dataclass(slots=True, eq=False)
class Exchange:
    endpoint: str
    model: str | None = None
    group: str | None = None
    user: str = "anonymous"  # principal id (persistence, fairness); never a metric label
    user_name: str = "anonymous"
    # For the access log (access.py): who called from where, how, and what they sent.
    client: str | None = None
    key_id: str | None = None
    method: str = "POST"
    bytes_in: int = 0
    stream: bool = False
    sse: bool = False
    # A token stream whose end the answer itself marks (done:true, [DONE]): checked with
    # ``complete`` at the end, and spliced (splice.py) when the splice is on.
    marked_end: bool = False
    # The request body as sent (after an alias's rewrite): bytes, which the garbage
    # collector never walks, while an exchange waits for the recorder; parsed again
    # there. ``body`` is for callers that hold a parsed one anyway (tests).
    request_body: bytes = field(default=b"", repr=False)
    body: dict[str, Any] | None = field(default=None, repr=False)
    id: str = field(default_factory=new_id)
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.monotonic)
    backend: str | None = None
    attempts: int = 0
    queue_wait: float = 0.0  # seconds spent waiting for a slot (admission)
    status: int = 0
    first_byte: float | None = None  # monotonic time the first body byte went out
    ended: float | None = None
    outcome: Outcome = "pending"
    error: str | None = None
    chunks: list[bytes] = field(default_factory=list, repr=False)
    room_id: str | None = None
    background: bool = False
    # Read once from the final chunk after the stream ends (``final_counters``).
    counters: dict[str, Any] = field(default_factory=dict)
    placed: Placed | None = None

    @property
    def shape(self) -> Shape:
        return shape_of(self.endpoint)

    @property
    def ttft(self) -> float | None:
        return None if self.first_byte is None else self.first_byte - self.t0

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.t0


# The model exchange of a request, for the edge and hooks that run around the handler.
EXCHANGE = web.RequestKey("exchange", Exchange)


@dataclass(slots=True)
class Answer:
    """What the assistant said, rebuilt from the forwarded bytes."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[Any] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    done_reason: str | None = None
    error: str | None = None


def last_lines(chunks: Sequence[bytes], count: int = 1) -> list[bytes]:
    """The last ``count`` non-empty lines of an answer, oldest first: the one rule for
    where an answer ends (the splice's completeness check, the final counters, the
    recorder's ``context``). Only as many chunks from the end are joined as hold those
    lines whole: a long last line (generate's ``context``) may have come in many reads.
    """
    taken: list[bytes] = []
    newlines = 0
    for chunk in reversed(chunks):
        taken.append(chunk)
        newlines += chunk.count(b"\n")
        # Twice as many newlines as lines: SSE frames end with a blank line.
        if newlines > 2 * count:
            break
    lines = _lines(b"".join(reversed(taken)))
    return lines[-count:]


def complete(chunks: Sequence[bytes], *, sse: bool) -> bool:
    """Whether a stream's last line is a proper end of an Ollama answer: without it the
    backend died or was cut off mid-answer, however cleanly its connection closed."""
    lines = last_lines(chunks)
    if not lines:
        return False
    last = lines[-1]
    if sse:
        return last.strip() == b"data: [DONE]" or b'"error"' in last
    return b'"done":true' in last or last.startswith(b'{"error"')


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\n") if line.strip()]


def _objects(exchange: Exchange, data: bytes) -> list[dict[str, Any]]:
    if exchange.sse:
        payloads = [line[5:].strip() for line in _lines(data) if line.startswith(b"data:")]
        array = b"[" + b",".join([p for p in payloads if p and p != b"[DONE]"]) + b"]"
    else:
        # Ollama writes one object per line and no blank lines: the whole answer becomes
        # one JSON array by replacing newlines, and one call into the C decoder (line by
        # line costs several times as much).
        array = b"[" + data.strip().replace(b"\n", b",") + b"]"
    try:
        values = orjson.loads(array)
    except orjson.JSONDecodeError:
        values = []
        for raw in _lines(data) if not exchange.sse else payloads:
            try:  # a broken line: keep what the others say
                values.append(orjson.loads(raw.removeprefix(b"data:").strip()))
            except orjson.JSONDecodeError:
                continue
    return [value for value in values if type(value) is dict]


def final_counters(exchange: Exchange) -> dict[str, Any]:
    """Counters from the final object only: cheap enough for every request."""
    # SSE: the usage frame comes before "[DONE]" (and a finish frame before it).
    chunks = exchange.chunks
    if not exchange.sse and len(chunks) == 1 and b"\n" not in chunks[0].rstrip():
        # A whole answer in one piece (every non-streamed one through the lane): it is
        # its own last line, without last_lines' split and join.
        lines = [chunks[0]] if chunks[0].strip() else []
    else:
        lines = last_lines(chunks, 3 if exchange.sse else 1)
    for line in reversed(lines):
        if exchange.sse:
            if not line.startswith(b"data:") or b"usage" not in line:
                continue
            line = line[5:]
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        if exchange.sse or "usage" in value:
            usage = value.get("usage") or {}
            return {
                "prompt_eval_count": usage.get("prompt_tokens"),
                "eval_count": usage.get("completion_tokens"),
            }
        counters = {}
        for k in COUNTER_FIELDS:  # a loop: a comprehension is a function call in 3.11
            if k in value:
                counters[k] = value[k]
        if "done_reason" in value:
            counters["done_reason"] = value["done_reason"]
        return counters
    return {}


def assemble(exchange: Exchange) -> Answer:
    """The full answer for persistence: content, thinking, tool calls, counters."""
    answer = Answer()
    data = b"".join(exchange.chunks)
    objects = _objects(exchange, data)
    errors = [obj["error"] for obj in objects if "error" in obj and len(obj) <= 2]
    if errors:
        err = errors[-1]
        answer.error = err.get("message") if isinstance(err, dict) else str(err)
    if exchange.sse or any("choices" in obj for obj in objects[-2:]):
        content: list[str] = []
        thinking: list[str] = []
        for obj in objects:
            if "choices" in obj:  # OpenAI chat completion (chunk or whole)
                _openai_choice(obj, answer, content, thinking)
        answer.content, answer.thinking = "".join(content), "".join(thinking)
        return answer
    # Native chat puts each piece in "message", generate at the top level. Built with
    # comprehensions: this runs once per answer, over every one of its lines.
    parts = [m if type(m := obj.get("message")) is dict else obj for obj in objects]
    pieces = [p for p in parts if "error" not in p]
    field = "content" if any("message" in obj for obj in objects) else "response"
    answer.content = _joined([p.get(field) for p in pieces])
    # Most answers have neither: the bytes say so before any object is asked.
    if b'"thinking"' in data:
        answer.thinking = _joined([p.get("thinking") for p in pieces])
    if b'"tool_calls"' in data:
        answer.tool_calls = [c for p in pieces if (calls := p.get("tool_calls")) for c in calls]
    for obj in reversed(objects):
        if obj.get("done"):
            answer.done_reason = obj.get("done_reason")
            answer.counters = {k: obj[k] for k in COUNTER_FIELDS if k in obj}
            break
    return answer


def _joined(texts: list[Any]) -> str:
    try:
        return "".join(filter(None, texts))
    except TypeError:  # a backend that sent something other than text
        return "".join(str(t) for t in texts if t)


def _openai_choice(
    obj: dict[str, Any], answer: Answer, content: list[str], thinking: list[str]
) -> None:
    usage = obj.get("usage")
    if isinstance(usage, dict):
        answer.counters = {
            "prompt_eval_count": usage.get("prompt_tokens"),
            "eval_count": usage.get("completion_tokens"),
        }
    for choice in obj.get("choices") or []:
        part = choice.get("delta") or choice.get("message") or {}
        content.append(str(part.get("content") or choice.get("text") or ""))
        thinking.append(str(part.get("reasoning") or ""))
        answer.tool_calls.extend(part.get("tool_calls") or [])
        if choice.get("finish_reason"):
            answer.done_reason = choice["finish_reason"]
