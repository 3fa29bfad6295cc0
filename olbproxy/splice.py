"""The splice: a token stream forwarded from the backend socket's callback, no task hop.

The plain relay costs, per token, a trip through aiohttp's chunked parser and
``StreamReader``, a future resolved, the handler task woken, and a trip through
``StreamResponse.write``: most of a Python proxy's CPU on a token stream. The splice
takes the backend connection's payload over the way aiohttp's WebSocket client does
(``ResponseHandler.set_parser``) and, in the same callback that received the bytes,
appends them to the exchange and writes them to the client framed as one HTTP chunk.
The handler task sleeps until the end (or until a slow client needs draining).

It needs a body without framing of its own, so spliced requests go to the backend as
HTTP/1.0: Ollama (Go's net/http) then writes the body raw and closes the connection at
its end. A connection that closes is therefore the only end signal, whether clean or
not; what distinguishes a finished answer from a backend that died is the answer itself
(Ollama's last line is ``"done":true``, an ``{"error"}`` line, or the SSE ``[DONE]``),
read once at the end by ``complete()``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from olbproxy.exchange import Exchange, last_lines

# Set by the relay on a request to send it as HTTP/1.0; removed before it leaves.
SPLICE_HEADER = "X-Olbproxy-Splice"

# Above this many bytes waiting for a slow client, stop reading from the backend until
# the client has caught up, so a stalled reader cannot make the proxy buffer a whole
# answer (the backend then blocks in its own write, as it would with a direct client).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


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
        "received",
    )

    def __init__(
        self, transport: asyncio.Transport, chunks: list[bytes], upstream: ResponseHandler
    ) -> None:
        self._transport = transport
        self._upstream = upstream
        self.framed = True  # an HTTP/1.1 client: each piece goes out as one chunk
        self._paused = False
        self._wake: asyncio.Future[None] | None = None
        self.chunks = chunks
        self.received = 0  # bytes from the backend; the watchdog reads it
        self.ended = False
        self.client_gone = False

    # -- called by aiohttp's ResponseHandler.data_received / connection_lost ----------

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.received += len(data)
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
    splice: Splice,
) -> bool:
    """Forward a spliced answer: the first piece through aiohttp (the headers go out with
    it), the rest from the socket callback. False when the answer was cut off."""
    content = upstream.content
    chunk = await content.readany()
    await response.prepare(request)
    exchange.first_byte = time.monotonic()
    if chunk:
        exchange.chunks.append(chunk)
        await response.write(chunk)
    if not chunk or content.is_eof() or upstream.connection is None:
        # The whole answer came at once: nothing left to splice.
        while rest := await content.readany():
            exchange.chunks.append(rest)
            await response.write(rest)
    else:
        splice.framed = response.headers.get("Transfer-Encoding") == "chunked"
        # No await from here to set_parser: nothing may slip past the splice.
        if rest := content.read_nowait(-1):
            splice.feed_data(rest)
        protocol = upstream.connection.protocol
        assert protocol is not None  # an open connection has its protocol
        protocol.set_parser(splice, content)
        await splice.wait()
        if splice.client_gone:
            raise ConnectionResetError("the client went away")
    if not complete(exchange.chunks, sse=exchange.sse):
        return False
    await response.write_eof()
    return True


def complete(chunks: list[bytes], *, sse: bool) -> bool:
    """Whether a stream's last line is a proper end of an Ollama answer."""
    lines = last_lines(chunks)
    if not lines:
        return False
    last = lines[-1]
    if sse:
        return last.strip() == b"data: [DONE]" or b'"error"' in last
    return b'"done":true' in last or last.startswith(b'{"error"')


class SpliceRequest(aiohttp.ClientRequest):
    """The shared session's request class: HTTP/1.0 for requests marked to be spliced.

    aiohttp sets the HTTP version per session, not per request; this keeps one session
    (one connection pool) for everything and lets the relay choose per request.
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        headers = kwargs.get("headers")
        if headers is not None and SPLICE_HEADER in headers:
            del headers[SPLICE_HEADER]
            kwargs["version"] = aiohttp.HttpVersion10
            # Else aiohttp asks an HTTP/1.0 server for keep-alive, and a body that ends
            # at the close must not be kept open.
            headers["Connection"] = "close"
        super().__init__(method, url, **kwargs)
