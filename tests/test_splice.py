"""The splice: token streams forwarded from the backend socket's callback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from conftest import StartProxy, StartSims, group, make_settings, until

from olbproxy import splice as splice_module
from olbproxy.exchange import complete
from olbproxy.settings import GroupSettings, Settings
from olbproxy.splice import Splice

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}]}

# Starts a backend that writes the given pieces with the given Content-Type; gives its URL.
Backend = Callable[[list[bytes], str], Awaitable[str]]


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """A backend writing given pieces, one write each, then closing; records versions."""
    runners: list[web.AppRunner] = []

    async def start(pieces: list[bytes], content_type: str) -> str:
        async def answer(request: web.Request) -> web.StreamResponse:
            await request.read()
            response = web.StreamResponse(headers={"Content-Type": content_type})
            await response.prepare(request)
            for piece in pieces:
                await response.write(piece)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/api/chat", answer)
        app.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def settings_for(url: str) -> Settings:
    return make_settings(GroupSettings(name="g", models=("m",), endpoints=(url,)))


async def test_a_stream_that_ends_without_done_gets_an_error_line(
    backend: Backend, start_proxy: StartProxy
) -> None:
    line = (
        b'{"model":"m","created_at":"x",'
        b'"message":{"role":"assistant","content":"a"},"done":false}\n'
    )
    url = await backend([line, line], "application/x-ndjson")
    proxy = await start_proxy(settings_for(url))
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        body = await resp.read()
    lines = body.splitlines()
    assert lines[:2] == [line.rstrip(), line.rstrip()]
    assert json.loads(lines[-1]) == {"error": "backend connection lost mid-answer"}


async def test_sse_passes_byte_for_byte_through_the_splice(
    backend: Backend, start_proxy: StartProxy
) -> None:
    head = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    frames = [
        head
        + b'"delta":{"role":"assistant","content":"\\u003ch\\u003e"},"finish_reason":null}]}\n\n',
        head + b'"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    url = await backend(frames, "text/event-stream")
    proxy = await start_proxy(settings_for(url))
    body = {**CHAT, "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.read() == b"".join(frames)


async def test_an_http_1_0_client_gets_the_body_unframed(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0, answer_tokens=5)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    reader, writer = await asyncio.open_connection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))
    body = json.dumps({"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]})
    writer.write(
        f"POST /api/chat HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    raw = await asyncio.wait_for(reader.read(), 5)  # HTTP/1.0: the body ends at the close
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"chunked" not in head.lower()
    lines = [json.loads(line) for line in payload.splitlines()]
    assert lines[-1]["done"] is True and len(lines) == 6


async def test_a_slow_reader_gets_every_byte(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0, answer_tokens=3000)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]})
    writer.write(
        f"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
    )
    received = bytearray()
    while chunk := await asyncio.wait_for(reader.read(4096), 10):
        received += chunk
        await asyncio.sleep(0.001)  # a client slower than the backend
    writer.close()
    payload = bytes(received).partition(b"\r\n\r\n")[2]
    lines = [json.loads(line) for line in _dechunk(payload).splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 3000
    assert sum(1 for line in lines if not line["done"]) == 3000
    # The backend connection the slow reader held (paused, with the lane) must not
    # come back to the next stream still paused: that one would never be read.
    short = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}
    async with asyncio.timeout(10):
        for _ in range(3):
            async with proxy.http.post(proxy.url + "/api/chat", json=short) as resp:
                assert json.loads((await resp.read()).splitlines()[-1])["done"] is True


class _Transport:
    """The four transport calls the splice makes, with a buffer the test controls."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.buffered = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class _Upstream:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def make_splice() -> tuple[Splice, _Transport, _Upstream, list[bytes]]:
    transport, upstream = _Transport(), _Upstream()
    chunks: list[bytes] = []
    # The fakes stand in for the asyncio.Transport and aiohttp ResponseHandler the splice
    # is given, with only the calls it makes.
    splice = Splice(cast(asyncio.Transport, transport), chunks, cast(ResponseHandler, upstream))
    return splice, transport, upstream, chunks


async def test_splice_frames_each_piece_as_one_chunk_and_keeps_a_copy() -> None:
    splice, transport, _, chunks = make_splice()
    splice.feed_data(b'{"done":false}\n')
    assert transport.sent == [b'f\r\n{"done":false}\n\r\n']
    assert chunks == [b'{"done":false}\n']


async def test_a_full_client_buffer_pauses_the_backend_until_drained() -> None:
    splice, transport, upstream, _ = make_splice()
    waiting = asyncio.create_task(splice.wait())
    splice.feed_data(b"x" * (splice_module.HIGH_WATER + 1))
    # Read as a plain bool: mypy would keep `upstream.paused` narrowed to True in the loop.
    paused: bool = upstream.paused
    assert paused
    await asyncio.sleep(0)  # the handler starts draining
    transport.buffered = 0  # the client caught up
    async with asyncio.timeout(5):
        while upstream.paused:  # noqa: ASYNC110 (the drain polls the transport)
            await asyncio.sleep(0.005)
    splice.feed_eof()
    await asyncio.wait_for(waiting, 5)
    assert splice.ended


async def test_a_client_gone_ends_the_wait_without_writing() -> None:
    splice, transport, _, _ = make_splice()
    waiting = asyncio.create_task(splice.wait())
    await asyncio.sleep(0)
    transport.closing = True
    splice.feed_data(b"late")
    await asyncio.wait_for(waiting, 5)
    assert splice.client_gone and transport.sent == []


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


@pytest.mark.parametrize(
    ("tail", "sse", "expected"),
    [
        (b'{"done":false}\n{"done":true,"done_reason":"stop"}\n', False, True),
        (b'{"done":false}\n{"error":"model runner has unexpectedly stopped"}\n', False, True),
        (b'{"done":false}\n', False, False),
        (b'{"done":fal', False, False),
        (b"data: {}\n\ndata: [DONE]\n\n", True, True),
        (b'data: {"choices":[]}\n\n', True, False),
        (b"", False, False),
    ],
)
def test_complete_tells_a_finished_answer_from_a_cut_one(
    tail: bytes, sse: bool, expected: bool
) -> None:
    assert complete([tail], sse=sse) is expected
    # The same bytes in one read each: the last line spans many chunks.
    assert complete([tail[i : i + 1] for i in range(len(tail))], sse=sse) is expected


@pytest.mark.parametrize("pieces", [2, 3, 7])
async def test_a_final_line_split_over_many_reads_is_a_complete_answer(
    start_sims: StartSims, start_proxy: StartProxy, pieces: int
) -> None:
    from olbproxy.app import RECORDER, STORE

    sims = await start_sims(1, tokens_per_second=0, answer_tokens=3)
    sims[0].faults.split_final = pieces  # /api/generate's last line carries `context`
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {"model": "gpt-oss:20b", "prompt": "one two three " * 200}
    async with proxy.http.post(proxy.url + "/api/generate", json=body) as resp:
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1]["done"] is True and "context" in lines[-1]
    assert not any("error" in line for line in lines)
    recorder = proxy.app[RECORDER]
    await until(lambda: recorder.idle and recorder.stats["written"] == 1)
    store = proxy.app[STORE]
    (room,) = await store.rooms.list("anonymous", limit=10)
    (message,) = await store.messages.list(room.id, limit=10)
    # Recorded as the complete answer it was, with the final line's counters.
    assert message.status == "done"
    assert message.counters is not None and message.counters["eval_count"] == 3
