"""Lane: the proxy's own pooled HTTP/1.1 keep-alive connections to the instances.

Through aiohttp's client a request costs ~100 µs of CPU (its request and response
objects, a ``StreamReader``, the connector's bookkeeping, a timer), and a token stream
spliced over aiohttp (splice.py) also needs a new connection each time (HTTP/1.0, so
that the body comes unframed). Here a request is one prepared ``bytes`` head plus the
body in one ``write`` on a kept-alive connection; httptools (llhttp, the parser
uvloop's authors maintain: Content-Length and chunked framing, keep-alive) parses the
answer in the socket's ``data_received`` callback.

* **Whole answers** (``stream: false``, embeddings, their ``/v1`` forms): the waiting
  handler is woken once, when the message is complete (``Lane.send``).
* **Token streams** (``Lane.stream``): the handler is woken at the headers; from then
  on each de-chunked piece goes from httptools' body callback straight to a sink,
  ``splice.Splice``, which writes it to the client: no task woken per token, as with
  the splice on aiohttp. The connection goes back to the pool once the answer ended
  whole (``Lane.finish``), and is closed otherwise, which stops Ollama generating.

A bench side harness measured whole answers: a bare aiohttp pass-through answers a
small request in 175 µs of CPU through aiohttp's client, 76 µs through this (README,
"What each change bought").

What it does not do, on purpose: TLS (an ``https://`` instance goes through aiohttp),
redirects, cookies, compression (Ollama sends none unasked, and we ask for none),
``Expect: 100-continue``, and streamed request bodies (blob uploads go through
aiohttp). Errors come out as ``upstream.Failure`` with the same kinds as aiohttp's, so
the relay retries, counts and reports them the same way either path.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Collection
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


class _Connection(asyncio.Protocol):
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
        self.home: _Instance | None = None  # the pool it goes back to
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


# A streamed answer's connection, as the relay holds it (attach a sink, then finish).
Stream = _Connection


class _Instance:
    """The idle connections to one instance, most recently used last."""

    __slots__ = ("host", "idle", "port", "retired")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: collections.deque[_Connection] = collections.deque()
        self.retired = False  # a reload dropped it: connections close as they finish


def _raise_busy(reply: Reply) -> None:
    if reply.status == 503:
        text = reply.body.decode(errors="replace")[:300].strip()
        raise Failure(f"busy (503): {text}", kind="busy", retry=True, busy=True)


class Lane:
    """Answers from the instances over pooled keep-alive connections."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._instances: dict[str, _Instance] = {}

    @staticmethod
    def serves(url: str) -> bool:
        """Only plain HTTP instances: TLS to an instance goes through aiohttp."""
        return url.startswith("http://")

    async def send(self, url: str, label: str, data: bytes, *, seconds: float | None) -> Reply:
        """Send one prepared request (head and body) to the instance at ``url`` and read
        its whole answer within ``seconds``. Raises ``Failure`` as upstream.Upstream
        does (Ollama's 503 is "busy": another instance may take it); cancellation and
        timeouts close the connection, which stops Ollama generating."""
        connection = await self._start(url, label, data, seconds, streaming=False)
        reply = connection.reply()
        self.finish(connection)
        _raise_busy(reply)
        return reply

    async def stream(
        self, url: str, label: str, data: bytes, *, seconds: float | None
    ) -> tuple[Reply, Stream]:
        """Send one prepared request and wait ``seconds`` for its answer's headers: the
        status and headers (and any body that came with them), and the connection
        whose body ``attach`` hands to a sink as it arrives. ``finish`` it after. An
        answer other than 200 is read whole (``complete``) before this returns."""
        connection = await self._start(url, label, data, seconds, streaming=True)
        reply = connection.reply()
        if reply.status == 503:
            self.finish(connection)
            _raise_busy(reply)
        return reply, connection

    def finish(self, connection: Stream) -> None:
        """Back to its pool if the answer was read whole and the instance keeps it open;
        closed otherwise (a stream cut short must stop Ollama generating)."""
        home = connection.home
        if (
            connection.complete
            and connection.keep
            and not connection.paused  # the answer ended while a slow client caught up
            and connection.transport is not None
            and home is not None
            and not home.retired
        ):
            connection.sink = None
            connection.idle_since = now = time.monotonic()
            idle = home.idle
            idle.append(connection)
            # The least recently used wait at the left: those idle too long go.
            while now - idle[0].idle_since >= IDLE_SECONDS:
                idle.popleft().close()
        else:
            connection.close()

    async def _start(
        self, url: str, label: str, data: bytes, seconds: float | None, *, streaming: bool
    ) -> _Connection:
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        instance = self._instances.get(url)
        if instance is None:
            instance = self._instances[url] = _Instance(url)
        now = time.monotonic()
        idle = instance.idle
        connection = None
        while idle:
            candidate = idle.pop()
            if candidate.usable(now):
                connection = candidate
                break
            candidate.close()
        try:
            if connection is None:
                connection = await self._connect(instance, deadline)
                await connection.start(data, deadline, streaming=streaming)
            else:
                try:
                    await connection.start(data, deadline, streaming=streaming)
                except Failure as failure:
                    if failure.kind != "reset":
                        raise
                    # The instance closed this idle connection as the request went out
                    # (a keep-alive timeout, a restart) and nothing came back: it never
                    # started, so once more on a new connection, as Go's client does.
                    connection = await self._connect(instance, deadline)
                    await connection.start(data, deadline, streaming=streaming)
        except Failure as failure:
            failure.message = f"backend {label}: {failure.message}"
            raise
        return connection

    async def _connect(self, instance: _Instance, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = loop.time() + self.connect_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                _, connection = await loop.create_connection(
                    _Connection, instance.host, instance.port
                )
                connection.home = instance
        except TimeoutError:
            if deadline is not None and deadline <= limit:
                raise Failure("no answer in time", kind="timeout") from None
            raise Failure(
                f"cannot connect: no answer in {self.connect_timeout:g}s",
                kind="connect",
                retry=True,
            ) from None
        except OSError as exc:
            raise Failure(
                f"cannot connect: {exc}", kind="connect", retry=True, certain=True
            ) from None
        return connection

    def keep_only(self, urls: Collection[str]) -> None:
        """A reload dropped instances: their idle connections close now, and those
        still answering close when they finish."""
        for url in [url for url in self._instances if url not in urls]:
            instance = self._instances.pop(url)
            instance.retired = True
            while instance.idle:
                instance.idle.pop().close()

    def close(self) -> None:
        for instance in self._instances.values():
            while instance.idle:
                instance.idle.pop().close()
        self._instances.clear()
