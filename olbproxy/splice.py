"""The splice: a token stream forwarded from the backend socket's callback, no task hop.

The plain relay costs, per token, a trip through aiohttp's chunked parser and
``StreamReader``, a future resolved, the handler task woken, and a trip through
``StreamResponse.write``: most of a Python proxy's CPU on a token stream. The splice
takes the backend connection's payload over the way aiohttp's WebSocket client does
(``ResponseHandler.set_parser``) and, in the same callback that received the bytes,
appends them to the exchange and writes them to the client framed as one HTTP chunk.
The handler task sleeps until the end (or until a slow client needs draining).

It needs a body without framing of its own, so spliced requests go to the backend as
HTTP/1.0 over a session of their own (``spliced_session``: aiohttp's documented
``version`` and ``force_close``): Ollama (Go's net/http) then writes the body raw and
closes the connection at its end. A connection that closes is therefore the only end
signal, whether clean or not; what distinguishes a finished answer from a backend that
died is the answer itself (Ollama's last line is ``"done":true``, an ``{"error"}``
line, or the SSE ``[DONE]``), read once at the end by ``exchange.complete()``.

The fence: this module is the only one that touches aiohttp's private or undocumented
contracts. They are, all of them:

1. ``ClientResponse.connection.protocol`` is the connection's ``ResponseHandler``;
2. ``ResponseHandler.set_parser(parser, payload)`` hands every later ``data_received``
   to ``parser.feed_data(data)``, which returns a pair whose first item, when true,
   ends that (for aiohttp 3.10-3.14 alike, ``(False, b"")`` means "go on"), and
   ``connection_lost`` calls ``parser.feed_eof()``;
3. ``ResponseHandler.pause_reading()`` / ``resume_reading()`` stop and restart reading
   from the backend socket;
4. the client's transport (``web.Request.transport``) may be written to directly while
   the handler holds the response open, HTTP/1.1 chunk framing done by hand.

The lane (lane.py) feeds the same ``Splice`` from its own connections' body callback
(``Source``: anything with ``pause_reading``/``resume_reading``), which needs only
contract 4 and no HTTP/1.0. This path through aiohttp stays for ``relay.lane: false``
and for instances the lane does not serve (TLS).

``contract_problems()`` checks what can be checked without a connection, at start-up:
a proxy on an aiohttp that changed them logs why and relays through documented API
only, as ``relay.splice: false`` does. ``tests/test_splice_contract.py`` exercises all
four on real sockets, and setup.cfg admits only the aiohttp versions it passed on.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Protocol

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from olbproxy.exchange import Exchange

# Above this many bytes waiting for a slow client, stop reading from the backend until
# the client has caught up, so a stalled reader cannot make the proxy buffer a whole
# answer (the backend then blocks in its own write, as it would with a direct client).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


def contract_problems() -> list[str]:
    """What of contracts 1-3 this aiohttp lacks (empty: the splice can run)."""
    problems = []
    for name in ("set_parser", "pause_reading", "resume_reading", "data_received"):
        if not callable(getattr(ResponseHandler, name, None)):
            problems.append(f"ResponseHandler.{name} is gone")
    setter = getattr(ResponseHandler, "set_parser", None)
    if callable(setter):
        params = list(inspect.signature(setter).parameters)
        if params[:3] != ["self", "parser", "payload"]:
            problems.append(f"ResponseHandler.set_parser takes {params}")
    if not hasattr(aiohttp.connector.Connection, "protocol"):
        problems.append("Connection.protocol is gone")
    return problems


def spliced_session(connect_timeout: float) -> aiohttp.ClientSession:
    """The session spliced requests go out on: HTTP/1.0, one connection per request
    (the body ends where the connection does, so nothing could be reused anyway)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        version=aiohttp.HttpVersion10,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )


def can_splice(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """Whether this answer can be spliced: a raw body (HTTP/1.0) on an open connection."""
    return (
        "transfer-encoding" not in upstream.headers
        and "content-length" not in upstream.headers
        and request.transport is not None
        and upstream.connection is not None
    )


class Source(Protocol):
    """Where spliced bytes come from: aiohttp's ResponseHandler, or a lane connection
    (lane.py, which feeds a Splice from httptools' body callback)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Splice:
    """The backend connection's payload parser while a stream is spliced."""

    __slots__ = (
        "_paused",
        "_transport",
        "_upstream",
        "_wake",
        "chunks",
        "client_gone",
        "ended",
        "framed",
    )

    def __init__(self, transport: asyncio.Transport, chunks: list[bytes], upstream: Source) -> None:
        self._transport = transport
        self._upstream = upstream
        self.framed = True  # an HTTP/1.1 client: each piece goes out as one chunk
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self.chunks = chunks
        self.ended = False
        self.client_gone = False

    # -- called by aiohttp's ResponseHandler.data_received / connection_lost ----------

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.chunks.append(data)
        transport = self._transport
        if transport.is_closing():
            # The client left; the handler's cancellation closes the backend too.
            self.client_gone = True
            self._notify()
            return False, b""
        if self.framed:
            transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            transport.write(data)
        if transport.get_write_buffer_size() > HIGH_WATER and not self._paused:
            self._paused = True
            self._upstream.pause_reading()
            self._notify()
        return False, b""

    def feed_eof(self) -> None:
        self.ended = True
        self._notify()

    # -- used by the handler ----------------------------------------------------------

    async def wait(self) -> None:
        """Until the backend is done, the client left, or the client needs draining."""
        while not (self.ended or self.client_gone):
            if self._paused:
                await self._drain()
                continue
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._wake
            finally:
                self._wake = None

    async def _drain(self) -> None:
        # Rare (a client reading slower than a model writes), so a short poll of the
        # transport's public buffer size is enough; no per-token cost is involved.
        while self._transport.get_write_buffer_size() > LOW_WATER:
            if self._transport.is_closing():
                self.client_gone = True
                return
            await asyncio.sleep(0.01)
        self._paused = False
        self._upstream.resume_reading()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)


async def relay_spliced(
    request: web.Request,
    response: web.StreamResponse,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
) -> None:
    """Forward a spliced answer: the first piece through aiohttp (the headers go out with
    it), the rest from the socket callback, until the backend closes the connection."""
    content = upstream.content
    chunk = await content.readany()
    await response.prepare(request)
    exchange.first_byte = time.monotonic()
    if chunk:
        exchange.chunks.append(chunk)
        await response.write(chunk)
    connection = upstream.connection
    if not chunk or content.is_eof() or connection is None or request.transport is None:
        # The whole answer came at once: nothing left to splice.
        while rest := await content.readany():
            exchange.chunks.append(rest)
            await response.write(rest)
    else:
        protocol = connection.protocol
        assert protocol is not None  # an open connection has its protocol
        splice = Splice(request.transport, exchange.chunks, protocol)
        splice.framed = response.headers.get("Transfer-Encoding") == "chunked"
        # No await from here to set_parser: nothing may slip past the splice.
        if rest := content.read_nowait(-1):
            splice.feed_data(rest)
        protocol.set_parser(splice, content)
        await splice.wait()
        if splice.client_gone:
            raise ConnectionResetError("the client went away")
