"""Lane: the proxy's own pooled HTTP/1.1 keep-alive connections, for whole answers.

A non-streamed answer (``stream: false`` chat and generate, embeddings, their ``/v1``
forms) is one request and one response. Through aiohttp's client that costs ~100 µs of
CPU per request (its request and response objects, a ``StreamReader``, the connector's
bookkeeping, a timer), more than everything else a small request needs. Here a request
is one prepared ``bytes`` head plus the body in one ``write``; the answer is parsed by
httptools (llhttp, the parser uvloop's authors maintain: Content-Length and chunked
framing, keep-alive) in the socket's ``data_received`` callback, and the waiting handler
is woken once, when the message is complete. A bench side harness measured it: a bare
aiohttp pass-through answers a small request in 175 µs of CPU through aiohttp's client,
76 µs through this (bench/README "What each change bought").

What it does not do, on purpose: TLS (an ``https://`` instance goes through aiohttp),
redirects, cookies, compression (Ollama sends none unasked, and we ask for none),
``Expect: 100-continue``, and streamed bodies (those are the splice's and aiohttp's).
Errors come out as ``upstream.Failure`` with the same kinds as aiohttp's, so the relay
retries, counts and reports them the same way either path.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import cast
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


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request on it at a time."""

    __slots__ = (
        "body",
        "framed",
        "headers",
        "idle_since",
        "keep",
        "parser",
        "reason",
        "received",
        "transport",
        "waiter",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.reason = b""
        self.received = False  # any byte of the current answer
        self.framed = False  # Content-Length or chunked: its end is in the bytes
        self.keep = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its API.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self._close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Failure(f"malformed answer: {exc}", kind="other"))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is None or self.waiter.done():
            return
        if self.received and not self.framed and self.parser.get_status_code():
            # An answer without framing ends at the close (HTTP/1.0 style): complete.
            self.keep = False
            self.waiter.set_result(None)
        elif self.received:
            self._fail(Failure("backend connection lost mid-answer", kind="stream_broken"))
        else:
            self._fail(
                Failure(f"connection closed before an answer ({exc!r})", kind="reset", retry=True)
            )

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

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the lane's side ---------------------------------------------------------------

    def _fail(self, failure: Failure) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(failure)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def usable(self, now: float) -> bool:
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and now - self.idle_since < IDLE_SECONDS
        )

    def _expire(self) -> None:
        self._fail(Failure("no answer in time", kind="timeout"))

    async def exchange(self, data: bytes, deadline: float | None) -> Reply:
        """Write the request, wait for the whole answer until ``deadline`` (loop time)."""
        assert self.transport is not None
        self.headers, self.body, self.reason = [], [], b""
        self.received = self.framed = self.keep = False
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
            self._close()
            raise
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        return Reply(
            self.parser.get_status_code(),
            self.reason.decode("latin-1"),
            self.headers,
            body,
        )


class _Instance:
    """The idle connections to one instance, most recently used last."""

    __slots__ = ("host", "idle", "port")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.idle: collections.deque[_Connection] = collections.deque()


class Lane:
    """Whole answers from the instances over pooled keep-alive connections."""

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
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        reply = await self._send(url, label, data, deadline)
        if reply.status == 503:
            text = reply.body.decode(errors="replace")[:300].strip()
            raise Failure(f"busy (503): {text}", kind="busy", retry=True, busy=True)
        return reply

    async def _send(self, url: str, label: str, data: bytes, deadline: float | None) -> Reply:
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
            candidate._close()
        try:
            if connection is None:
                connection = await self._connect(instance, deadline)
                reply = await connection.exchange(data, deadline)
            else:
                try:
                    reply = await connection.exchange(data, deadline)
                except Failure as failure:
                    if failure.kind != "reset":
                        raise
                    # The instance closed this idle connection as the request went out
                    # (a keep-alive timeout, a restart) and nothing came back: it never
                    # started, so once more on a new connection, as Go's client does.
                    connection = await self._connect(instance, deadline)
                    reply = await connection.exchange(data, deadline)
        except Failure as failure:
            failure.message = f"backend {label}: {failure.message}"
            raise
        if connection.keep and connection.transport is not None:
            connection.idle_since = now = time.monotonic()
            idle.append(connection)
            # The least recently used wait at the left: those idle too long go.
            while now - idle[0].idle_since >= IDLE_SECONDS:
                idle.popleft()._close()
        else:
            connection._close()
        return reply

    async def _connect(self, instance: _Instance, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = loop.time() + self.connect_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                _, connection = await loop.create_connection(
                    _Connection, instance.host, instance.port
                )
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

    def close(self) -> None:
        for instance in self._instances.values():
            while instance.idle:
                instance.idle.pop()._close()
        self._instances.clear()
