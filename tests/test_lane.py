"""Whole answers (stream: false) on real sockets: keep-alive reuse, framing, faults.

They go through the lane (lane.py) and, in `make test`'s second pass, through aiohttp's
client (OLBPROXY_SPLICE=0): the client must not be able to tell which.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest
from conftest import SPLICE, StartProxy, StartSims, group, make_settings, until

from olbproxy.app import POOL, reload_routing
from olbproxy.settings import GroupSettings, Settings

WHOLE = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "hi"}]}
ANSWER = b'{"model":"m","message":{"role":"assistant","content":"\xec\x95\x88"},"done":true}'

# An answer: what to write for the n-th request (0-based) on a connection, or None to
# hang up without a word.
Script = Callable[[int], bytes | None]


def framed(body: bytes = ANSWER, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json; charset=utf-8", *extra]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


PROBES = {
    b"GET /api/version ": b'{"version":"0.13.5"}',
    b"GET /api/ps ": b'{"models":[]}',
}


@dataclass
class RawBackend:
    """An HTTP/1.1 server by hand: health probes get their answers, and each chat
    request the script's, with the connection it came on."""

    script: Script
    connections: int = 0
    chats: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, request)
    url: str = ""
    close_after_answer: bool = False  # an answer delimited by the close
    ended: set[int] = field(default_factory=set)  # connections that have closed

    @property
    def chat_connections(self) -> int:
        return len({connection for connection, _ in self.chats})

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me, n = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                probe = next((a for p, a in PROBES.items() if head.startswith(p)), None)
                if probe is not None:
                    answer: bytes | None = framed(probe)
                else:
                    self.chats.append((me, request))
                    answer = self.script(n)
                    n += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer and probe is None:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended.add(me)
            writer.close()


MakeBackend = Callable[[Script], Awaitable[RawBackend]]


@pytest.fixture
async def raw_backend() -> AsyncIterator[MakeBackend]:
    servers: list[asyncio.Server] = []

    async def make(script: Script) -> RawBackend:
        backend = RawBackend(script)
        server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
        backend.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        servers.append(server)
        return backend

    yield make
    for server in servers:
        server.close()


def settings_for(*backends: RawBackend) -> Settings:
    endpoints = tuple(b.url for b in backends)
    return make_settings(GroupSettings(name="g", models=("m",), endpoints=endpoints))


async def test_whole_answers_reuse_one_connection_and_arrive_unchanged(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    backend = await raw_backend(lambda n: framed(ANSWER, "X-Ollama-Version: 0.13.5"))
    proxy = await start_proxy(settings_for(backend))
    for _ in range(10):
        async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
            assert resp.status == 200
            assert await resp.read() == ANSWER
            assert resp.headers["Content-Length"] == str(len(ANSWER))
            assert resp.headers["X-Ollama-Version"] == "0.13.5"
    # Keep-alive: ten requests, one connection (a connect per request costs the
    # instance a goroutine and the proxy a handshake). aiohttp's pool, in the second
    # pass, also lends them the health probes' connection.
    assert backend.chat_connections <= 2 and len(backend.chats) == 10


async def test_a_chunked_answer_is_sent_whole_with_its_length(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    pieces = [ANSWER[:10], ANSWER[10:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    backend = await raw_backend(lambda n: head + chunked)
    proxy = await start_proxy(settings_for(backend))
    for _ in range(5):
        async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
            assert resp.status == 200
            assert await resp.read() == ANSWER
    assert backend.chat_connections <= 2


async def test_connection_close_is_honoured(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    # The instance says it closes: the next request must not be written to that socket.
    backend = await raw_backend(lambda n: framed(ANSWER, "Connection: close") if n == 0 else None)
    proxy = await start_proxy(settings_for(backend))
    for _ in range(3):
        async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
            assert resp.status == 200 and await resp.read() == ANSWER
    assert backend.chat_connections == 3


async def test_an_answer_delimited_by_the_close_is_whole(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    # HTTP/1.0 style: no length, no chunks, the body ends where the connection does.
    unframed = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ANSWER
    backend = await raw_backend(lambda n: unframed)
    backend.close_after_answer = True
    proxy = await start_proxy(settings_for(backend))
    for _ in range(2):
        async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
            assert resp.status == 200 and await resp.read() == ANSWER
    assert backend.chat_connections == 2


@pytest.mark.skipif(not SPLICE, reason="the lane's own retry; aiohttp's client has none")
async def test_an_idle_connection_the_instance_closed_is_retried_on_a_new_one(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    # Each connection answers once, then hangs up on the next request without a word:
    # a keep-alive timeout that strikes as the request goes out. Nothing came back, so
    # the request never started: the proxy sends it again on a new connection.
    backend = await raw_backend(lambda n: framed() if n == 0 else None)
    proxy = await start_proxy(settings_for(backend))
    for _ in range(3):
        async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
            assert resp.status == 200 and await resp.read() == ANSWER
    assert backend.chat_connections == 3
    assert proxy.app[POOL].backends[backend.url].healthy


async def test_a_malformed_answer_is_a_clean_502(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    backend = await raw_backend(lambda n: b"HTTP/1.1 abc\r\nnonsense\r\n\r\n")
    proxy = await start_proxy(settings_for(backend))
    async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert error.startswith("backend 127.0.0.1:") and "Traceback" not in error


async def test_credentials_and_hop_by_hop_headers_do_not_reach_the_instance(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    backend = await raw_backend(lambda n: framed())
    proxy = await start_proxy(settings_for(backend))
    headers = {
        "Authorization": "Bearer secret",
        "X-Api-Key": "k",
        "Cookie": "c=1",
        "User-Agent": "ua/1",
    }
    async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE, headers=headers) as resp:
        assert resp.status == 200
    head, _, body = backend.chats[0][1].partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "post /api/chat http/1.1"
    names = {line.split(":")[0] for line in lines[1:]}
    assert names == {"host", "user-agent", "accept", "content-type", "content-length"}
    assert json.loads(body)["stream"] is False


async def test_whole_answers_fail_over_like_streams(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(3, tokens_per_second=0)
    await sims[0].stop()  # refused
    sims[1].faults.busy = -1  # Ollama's 503
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {**WHOLE, "model": "gpt-oss:20b"}
    for _ in range(3):
        async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert str(answer["message"]["content"]).startswith("[sim3]")


async def test_a_hung_instance_gives_504_and_is_hung_up_on(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    sims[0].faults.hang = True
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims, total_timeout=0.3))
    proxy = await start_proxy(settings)
    async with proxy.http.post(
        proxy.url + "/api/chat", json={**WHOLE, "model": "gpt-oss:20b"}
    ) as resp:
        assert resp.status == 504
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1)


# -- token streams: spliced from the lane's body callback -------------------------------

LINES = [
    b'{"model":"m","message":{"role":"assistant","content":"\\u003cb\\u003e"},"done":false}\n',
    b'{"model":"m","message":{"role":"assistant","content":"\xec\x95\x88"},"done":false}\n',
    b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"eval_count":2}\n',
]
STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def chunked(pieces: list[bytes], *, end: bool = True) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head + body + (b"0\r\n\r\n" if end else b"")


async def test_streams_reuse_one_connection_and_arrive_byte_for_byte(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    # A line split across two chunks, and two lines in one: the client gets the bytes.
    pieces = [LINES[0][:30], LINES[0][30:] + LINES[1], LINES[2]]
    backend = await raw_backend(lambda n: chunked(pieces))
    proxy = await start_proxy(settings_for(backend))
    for _ in range(5):
        async with proxy.http.post(proxy.url + "/api/chat", json=STREAM) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            assert await resp.read() == b"".join(LINES)
    # No connection per stream (HTTP/1.0 needs one): keep-alive, as for whole answers.
    assert backend.chat_connections <= 2 and len(backend.chats) == 5


async def test_a_stream_cut_short_ends_with_an_error_line_and_a_new_connection(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    # The first answer stops after one line, mid-stream; the instance hangs up.
    backend = await raw_backend(lambda n: chunked(LINES[:1], end=False) if n == 0 else None)
    backend.close_after_answer = True
    proxy = await start_proxy(settings_for(backend))
    async with proxy.http.post(proxy.url + "/api/chat", json=STREAM) as resp:
        lines = (await resp.read()).splitlines()
    assert lines[0] == LINES[0].rstrip()
    assert json.loads(lines[-1])["error"].startswith("backend connection lost")
    backend.script = lambda n: chunked(LINES)
    async with proxy.http.post(proxy.url + "/api/chat", json=STREAM) as resp:
        assert await resp.read() == b"".join(LINES)
    assert backend.chat_connections == 2


@pytest.mark.skipif(not SPLICE, reason="the lane's own pool; aiohttp's has its own")
async def test_a_reload_that_drops_an_instance_closes_the_connections_kept_to_it(
    raw_backend: MakeBackend, start_proxy: StartProxy
) -> None:
    kept = await raw_backend(lambda n: framed())
    dropped = await raw_backend(lambda n: framed())
    both = GroupSettings(name="g", models=("m",), endpoints=(kept.url, dropped.url))
    proxy = await start_proxy(make_settings(replace(both, placement="round_robin")))
    for _ in range(4):
        async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
            assert resp.status == 200 and await resp.read() == ANSWER
    assert kept.chats and dropped.chats

    reload_routing(proxy.app, make_settings(replace(both, endpoints=(kept.url,))))

    dropped_connections = {connection for connection, _ in dropped.chats}
    await until(lambda: dropped_connections <= dropped.ended)
    async with proxy.http.post(proxy.url + "/api/chat", json=WHOLE) as resp:
        assert resp.status == 200
    assert not {connection for connection, _ in kept.chats} & kept.ended  # still kept
