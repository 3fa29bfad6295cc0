"""Frame: one finished exchange as it travels from the relay to the recording process.

The relay's only recording work is this encoding: a few fields as JSON (orjson, C),
the request body and the answer as the bytes that were forwarded. Parsing them, the
history hashes, filing and BSON all happen in the recording process (worker.py).

Layout (network byte order)::

    kind:u8  meta:u32  body:u32  answer:u32  meta bytes  body bytes  answer bytes

``kind`` says what the recording process does with it: ``NEW`` exchanges are recorded
as usual; ``RESENT`` ones may have reached MongoDB already (the recording process
stopped before saying so, or they waited in the hand-off's overflow across a restart)
and go through the spool's replay, which checks before it files; ``FORGET`` carries a
deleted room's id, for the filing caches.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from olbproxy.exchange import Exchange, Placed

NEW, RESENT, FORGET = 0, 1, 2
HEAD = struct.Struct("!BIII")
# A frame bigger than this is not one of ours (a body is capped by max_body_bytes, an
# answer by what a model says): the stream is broken, not merely large.
LIMIT = 1 << 31


class FrameError(ValueError):
    """Bytes that are not a frame."""


def resent(frame: bytes) -> bytes:
    """The same frame, marked ``RESENT``."""
    return bytes((RESENT,)) + frame[1:]


def encode(exchange: Exchange, kind: int = NEW) -> bytes:
    """The frame of a finished exchange."""
    body = exchange.request_body
    if not body and exchange.body is not None:
        body = orjson.dumps(exchange.body)
    placed = exchange.placed
    meta = orjson.dumps(
        {
            "id": exchange.id,
            "endpoint": exchange.endpoint,
            "model": exchange.model,
            "group": exchange.group,
            "user": exchange.user,
            "user_name": exchange.user_name,
            "stream": exchange.stream,
            "sse": exchange.sse,
            "started_at": exchange.started_at,
            "ttft": exchange.ttft,
            "duration": exchange.duration,
            "backend": exchange.backend,
            "status": exchange.status,
            "outcome": exchange.outcome,
            "error": exchange.error,
            "room_id": exchange.room_id,
            "counters": exchange.counters,
            "placement": None if placed is None else placed.reason,
            "placement_key": None if placed is None else placed.key_hex(),
        }
    )
    answer = b"".join(exchange.chunks)
    return b"".join((HEAD.pack(kind, len(meta), len(body), len(answer)), meta, body, answer))


def forget(room_id: str) -> bytes:
    meta = room_id.encode()
    return HEAD.pack(FORGET, len(meta), 0, 0) + meta


def size(head: bytes) -> int:
    """The length of the rest of the frame whose head this is."""
    kind, meta, body, answer = HEAD.unpack(head)
    rest: int = meta + body + answer
    if kind not in (NEW, RESENT, FORGET) or rest >= LIMIT:
        raise FrameError(f"not a frame head: {head.hex()}")
    return rest


def decode(frame: bytes) -> tuple[int, Exchange | str]:
    """The kind and the exchange (or, for ``FORGET``, the room id) of a whole frame."""
    kind, meta_len, body_len, answer_len = HEAD.unpack_from(frame)
    start = HEAD.size
    meta = frame[start : start + meta_len]
    if kind == FORGET:
        return kind, meta.decode()
    body = frame[start + meta_len : start + meta_len + body_len]
    answer = frame[start + meta_len + body_len :]
    if len(answer) != answer_len:
        raise FrameError("a frame cut short")
    try:
        fields: dict[str, Any] = orjson.loads(meta)
        return kind, _exchange(fields, body, answer)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise FrameError(f"a frame that does not hold an exchange: {exc}") from None


def _exchange(fields: dict[str, Any], body: bytes, answer: bytes) -> Exchange:
    # Times travel relative to the request's start (t0 = 0): monotonic clocks of two
    # processes need not agree, durations do.
    ttft, duration = fields["ttft"], fields["duration"]
    reason, key = fields["placement"], fields["placement_key"]
    return Exchange(
        endpoint=fields["endpoint"],
        model=fields["model"],
        group=fields["group"],
        user=fields["user"],
        user_name=fields["user_name"],
        stream=fields["stream"],
        sse=fields["sse"],
        request_body=body,
        id=fields["id"],
        started_at=fields["started_at"],
        t0=0.0,
        first_byte=ttft,
        ended=duration,
        backend=fields["backend"],
        status=fields["status"],
        outcome=fields["outcome"],
        error=fields["error"],
        chunks=[answer] if answer else [],
        room_id=fields["room_id"],
        counters=fields["counters"],
        placed=None if reason is None and key is None else Placed(reason or "", recorded_key=key),
    )
