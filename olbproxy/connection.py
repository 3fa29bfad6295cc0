"""Connection: one of the lane's keep-alive HTTP/1.1 connections to an instance, and
the answer read from it.

An ``asyncio.Protocol``: a request is one prepared ``bytes`` head plus the body in one
``write`` (``start``), and httptools (llhttp) parses the answer in the socket's
``data_received`` callback. A whole answer wakes the waiting handler once, when it is
complete (``reply``); a token stream wakes it at the headers, and from then on each
de-chunked piece goes from httptools' body callback straight to a ``Sink``
(splice.Splice, ``attach``). ``Instance`` holds the idle connections to one instance;
which connection a request takes, and whether it goes back, is the lane's (lane.py).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from olbproxy.upstream import Failure

# An idle connection older than this is closed rather than reused (aiohttp's connector
# uses the same default): a backend restarted meanwhile has long forgotten it.
IDLE_SECONDS = 60.0


@dataclass(slots=True)
class Reply:
    """A whole answer: status, reason, raw header pairs, and the (unframed) body."""

    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


class Sink(Protocol):
    """Where a streamed answer's body goes as it arrives (splice.Splice)."""

    def feed_data(self, data: bytes) -> tuple[bool, bytes]: ...

    def feed_eof(self) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request on it at a time."""

    __slots__ = (
        "body",
        "busy",
        "complete",
        "framed",
        "headers",
        "home",
        "idle_since",
        "keep",
        "parser",
        "paused",
        "reason",
        "received",
        "sink",
        "streaming",
        "transport",
        "waiter",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.home: Instance | None = None  # the pool it goes back to
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.reason = b""
        self.busy = False  # a request is out and its answer not complete
        self.received = False  # any byte of the current answer
        self.framed = False  # Content-Length or chunked: its end is in the bytes
        self.keep = False
        self.complete = False
        self.streaming = False  # wake the waiter at the headers, the body goes to sink
        self.sink: Sink | None = None
        self.paused = False  # by the sink, for a slow client
        self.idle_since = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Failure(f"malformed answer: {exc}", kind="other"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.busy:
            return
        self.busy = False
        if self.received and not self.framed and self.parser.get_status_code():
            # An answer without framing ends at the close (HTTP/1.0 style): complete.
            self.keep = False
            self.complete = True
            self._wake()
        elif self.received:
            self._fail(Failure("backend connection lost mid-answer", kind="stream_broken"))
        else:
            why = f"connection closed before an answer ({exc!r})"
            self._fail(Failure(why, kind="reset", retry=True))
        if self.sink is not None:
            # Whether the answer was whole is for the relay to tell from its last line.
            self.sink.feed_eof()

    # -- httptools callbacks -----------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        # A stream's waiter wakes at the headers; an error answer is read whole first.
        if self.streaming and self.parser.get_status_code() == 200:
            self._wake()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink.feed_data(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()
        self.complete = True
        self.busy = False
        self._wake()
        if self.sink is not None:
            self.sink.feed_eof()

    # -- the lane's side ---------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: Failure) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(failure)

    def close(self) -> None:
        """Hang up: what stops Ollama generating an answer nobody will read."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # Flow control for a slow client (splice.Splice pauses the backend's socket).
    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
        self.paused = False

    def usable(self, now: float) -> bool:
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and now - self.idle_since < IDLE_SECONDS
        )

    def _expire(self) -> None:
        self._fail(Failure("no answer in time", kind="timeout"))

    async def start(self, data: bytes, deadline: float | None, *, streaming: bool) -> None:
        """Write the request and wait until ``deadline`` (loop time) for the whole answer,
        or for its headers when ``streaming`` (the body then goes to ``attach``'s sink)."""
        assert self.transport is not None
        self.headers, self.body, self.reason = [], [], b""
        self.received = self.framed = self.keep = self.complete = False
        self.streaming, self.sink, self.busy = streaming, None, True
        self.parser = httptools.HttpResponseParser(self)
        loop = asyncio.get_running_loop()
        waiter = self.waiter = loop.create_future()
        # One timer handle rather than asyncio.timeout(): its context manager, task
        # bookkeeping and rescheduling were 3 % of a small request's CPU.
        timer = loop.call_at(deadline, self._expire) if deadline is not None else None
        self.transport.write(data)
        try:
            await waiter
        except BaseException:
            # Cancelled (our client left), timed out or broken: the connection's state
            # is unknown, and closing it is what stops Ollama generating.
            self.busy = False
            self.close()
            raise
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def reply(self) -> Reply:
        """The answer's status, reason and headers, and the body read so far."""
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        return Reply(
            self.parser.get_status_code(), self.reason.decode("latin-1"), self.headers, body
        )

    def attach(self, sink: Sink) -> None:
        """From now on the body goes to ``sink``: what came with the headers first."""
        for piece in self.body:
            sink.feed_data(piece)
        self.body = []
        self.sink = sink
        if self.complete or self.transport is None:
            sink.feed_eof()


class Instance:
    """The idle connections to one instance, most recently used last."""

    __slots__ = ("host", "idle", "port", "retired")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: collections.deque[Connection] = collections.deque()
        self.retired = False  # a reload dropped it: connections close as they finish
