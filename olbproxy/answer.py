"""Answer: a backend's answer on its way out to the client, once the relay has it.

Which headers pass (hop-by-hop ones never do), a whole answer sent as headers and body
in one write (``send_reply`` for the lane's, ``copy_whole`` for aiohttp's), any other
answer copied as it arrives (``copy_stream``: one read, one append, one write per
chunk), and the end of a stream that broke after its first byte (``end_broken``):
Ollama's final ``{"error": ...}`` line (an SSE error frame on ``/v1``), or a cut
connection where the framing leaves no room for one. Token streams of chat and
generate mostly bypass this: the splice (splice.py) writes them.

The relay (relay.py) chooses among these and calls them directly: they were its own
methods, and moving them here added no call on the way of a request or a chunk.
"""

from __future__ import annotations

import contextlib
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from olbproxy.connection import Reply
from olbproxy.errors import UpstreamError, stream_error_line
from olbproxy.exchange import Exchange

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
STREAMING_TYPES = ("application/x-ndjson", "text/event-stream")


def headers_of(reply: Reply) -> CIMultiDict[str]:
    """A lane answer's headers for the client: hop-by-hop ones and the length dropped."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in reply.headers:
        text = name.decode("latin-1")
        if text.lower() not in DROP_RESPONSE:
            headers.add(text, value.decode("utf-8", "replace"))
    return headers


async def send_reply(
    request: web.Request, exchange: Exchange, reply: Reply, headers: CIMultiDict[str]
) -> web.StreamResponse:
    """A lane answer read whole, sent as headers and body in one write."""
    response = web.Response(status=reply.status, reason=reply.reason, headers=headers)
    response.body = reply.body
    exchange.first_byte = time.monotonic()
    exchange.chunks.append(reply.body)
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionResetError:
        exchange.outcome = "cancelled"  # the client left: an ordinary end
        return response
    finally:
        exchange.ended = time.monotonic()
    if exchange.outcome == "pending":
        exchange.outcome = "done" if reply.status < 400 else "error"
    return response


async def copy_stream(
    request: web.Request,
    response: web.StreamResponse,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
) -> None:
    read = upstream.content.readany
    chunk = await read()
    await response.prepare(request)
    exchange.first_byte = time.monotonic()
    write = response.write
    chunks = exchange.chunks
    append = chunks.append
    while chunk:
        append(chunk)
        await write(chunk)
        chunk = await read()


async def copy_whole(
    request: web.Request,
    response: web.Response,
    exchange: Exchange,
    upstream: aiohttp.ClientResponse,
) -> None:
    body = await upstream.read()
    exchange.first_byte = time.monotonic()
    exchange.chunks.append(body)
    response.body = body
    await response.prepare(request)


async def end_broken(
    request: web.Request,
    response: web.StreamResponse,
    exchange: Exchange,
    message: str,
    fixed_length: bool,
) -> None:
    if isinstance(response, web.Response) and not response.prepared:
        # A whole answer is sent only once it is all in: nothing has gone out yet,
        # so the client gets a plain 502 rather than a cut connection.
        raise UpstreamError(message)
    if not response.prepared:
        await response.prepare(request)
    content_type = response.headers.get("Content-Type", "")
    if fixed_length or not content_type.startswith(STREAMING_TYPES):
        # A body with a fixed length cannot carry an error line; cutting the
        # connection is the only honest signal left.
        if request.transport is not None:
            request.transport.close()
        return
    with contextlib.suppress(ConnectionResetError):
        await response.write(stream_error_line(message, exchange.shape, sse=exchange.sse))
        await response.write_eof()
