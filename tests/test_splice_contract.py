"""The aiohttp contracts the splice stands on (splice.py's docstring lists them), checked
on real sockets against the aiohttp installed.

When one of these fails, aiohttp changed something the splice relies on: run with
``relay.splice: false`` (the proxy also turns the splice off by itself when
``contract_problems()`` finds a change at start-up), and keep setup.cfg's aiohttp range
to the versions this file passes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.client_proto import ResponseHandler
from conftest import StartProxy, StartSims, group, make_settings

from olbproxy.splice import contract_problems, spliced_session

VERSION = aiohttp.__version__
CHANGED = f"aiohttp {VERSION} changed a contract of the splice (olbproxy/splice.py)"


class Recording:
    """A payload parser that keeps what aiohttp feeds it."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.eof = asyncio.Event()
        self.arrived = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.fed.append(data)
        self.arrived.set()
        return False, b""

    def feed_eof(self) -> None:
        self.eof.set()


@pytest.fixture
async def raw_backend() -> AsyncIterator[tuple[str, asyncio.Queue[bytes | None]]]:
    """An HTTP/1.0 backend whose body pieces the test sends one by one (None: close)."""
    pieces: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n")
        while (piece := await pieces.get()) is not None:
            writer.write(piece)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", pieces
    server.close()
    await server.wait_closed()


def test_the_contracts_checked_at_start_up_hold() -> None:
    assert contract_problems() == [], CHANGED


async def test_a_parser_set_on_the_connection_gets_every_later_byte_and_the_close(
    raw_backend: tuple[str, asyncio.Queue[bytes | None]],
) -> None:
    url, pieces = raw_backend
    async with spliced_session(5.0) as session:
        await pieces.put(b'{"n":1}\n')
        response = await session.post(url + "/api/chat", data=b"{}")
        assert response.version == aiohttp.HttpVersion10
        first = await response.content.readany()
        assert first == b'{"n":1}\n'
        # Contract 1: the connection's protocol is aiohttp's ResponseHandler.
        assert response.connection is not None, CHANGED
        protocol = response.connection.protocol
        assert isinstance(protocol, ResponseHandler), CHANGED
        # Contract 2: after set_parser, data_received goes to our parser; (False, b"")
        # keeps it coming; connection_lost calls feed_eof.
        parser = Recording()
        protocol.set_parser(parser, response.content)
        await pieces.put(b'{"n":2}\n')
        await asyncio.wait_for(parser.arrived.wait(), 5)
        parser.arrived.clear()
        await pieces.put(b'{"n":3}\n')
        await asyncio.wait_for(parser.arrived.wait(), 5)
        assert b"".join(parser.fed) == b'{"n":2}\n{"n":3}\n', CHANGED
        # Contract 3: pause_reading/resume_reading stop and restart the socket's reads.
        assert protocol.transport is not None
        protocol.pause_reading()
        assert not protocol.transport.is_reading(), CHANGED
        protocol.resume_reading()
        assert protocol.transport.is_reading(), CHANGED
        await pieces.put(None)
        await asyncio.wait_for(parser.eof.wait(), 5)
        response.close()


async def test_a_stream_through_the_proxy_is_spliced_and_framed_by_hand(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    # Contract 4, and the whole path: an HTTP/1.0 request to the backend, the answer
    # written to the client's transport as HTTP/1.1 chunks by the splice itself.
    sims = await start_sims(1, tokens_per_second=200, answer_tokens=30)
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims))
    if not settings.relay.splice:
        pytest.skip("this run has the splice off (OLBPROXY_SPLICE=0)")
    # The lane would take the stream (HTTP/1.1 keep-alive, its own parser): this test
    # is for the splice on aiohttp's connection, which the lane being off leaves.
    proxy = await start_proxy(replace(settings, relay=replace(settings.relay, lane=False)))
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1]["done"] is True
    assert sum(1 for line in lines if not line["done"]) == 30
    (request,) = [r for r in sims[0].requests if r.path == "/api/chat"]
    assert request.version == "1.0", "the stream was not spliced"
