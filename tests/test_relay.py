"""The stream relay: bytes unchanged, first token early, disconnects propagate, headers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from conftest import StartProxy, StartSims, group, make_settings

from olbproxy.settings import GroupSettings

# A stream with awkward framing: a line split across chunks, Go's \u003c escapes,
# non-ASCII text, and a final done line with counters.
RAW_CHUNKS = [
    b'{"model":"m:latest","created_at":"2025-07-07T20:22:19.184789Z","message":{"role":"assistant","content":"\\u003cb\\u003e"},"done":false}\n',
    b'{"model":"m:latest","created_at":"2025-07-07T20:22:19.19Z","message":{"role":"assis',
    b'tant","content":"\xec\x95\x88\xeb\x85\x95"},"done":false}\n{"model":"m:latest","created_at":"2025-07-07T20:22:19.2Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":182242375,"load_duration":41295167,"prompt_eval_count":169,"prompt_eval_duration":24573166,"eval_count":15,"eval_duration":115959084}\n',
]


@pytest.fixture
async def raw_backend() -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A backend that writes RAW_CHUNKS one write at a time and records what it got."""
    seen: list[web.Request] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for chunk in RAW_CHUNKS:
            await response.write(chunk)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_stream_is_byte_identical(
    raw_backend: tuple[str, list[web.Request]], start_proxy: StartProxy
) -> None:
    url, _ = raw_backend
    settings = make_settings(GroupSettings(name="g", models=("m",), endpoints=(url,)))
    proxy = await start_proxy(settings)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        received = await resp.read()
    assert received == b"".join(RAW_CHUNKS)


async def test_request_headers_are_rewritten_for_the_backend(
    raw_backend: tuple[str, list[web.Request]], start_proxy: StartProxy
) -> None:
    url, seen = raw_backend
    settings = make_settings(GroupSettings(name="g", models=("m",), endpoints=(url,)))
    proxy = await start_proxy(settings)
    raw = b'{"model":"m","messages":[{"role":"user","content":"\\u003c\xed\x95\x9c"}]}'
    headers = {
        "Authorization": "Bearer secret-token",
        "Cookie": "session=1",
        "User-Agent": "ollama-python/0.6.3",
        "Content-Type": "application/json",
        "Proxy-Authorization": "Basic x",
    }
    async with proxy.http.post(proxy.url + "/api/chat", data=raw, headers=headers) as resp:
        await resp.read()
    request = seen[0]
    assert request.headers["Host"] == url.removeprefix("http://")
    assert "Authorization" not in request.headers
    assert "Cookie" not in request.headers
    assert "Proxy-Authorization" not in request.headers
    assert request.headers["User-Agent"] == "ollama-python/0.6.3"


async def test_request_body_reaches_the_backend_unchanged(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    raw = (
        b'{"model":"gpt-oss:20b",'
        b'"messages":[{"role":"user","content":"\\u003ctag\\u003e \xec\x95\x88"}],'
        b'"stream":false,"future_field":{"x":1.10}}'
    )
    async with proxy.http.post(proxy.url + "/api/chat", data=raw) as resp:
        assert resp.status == 200
    assert sims[0].requests[-1].body == raw


async def test_first_token_arrives_before_the_backend_finishes(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=20, answer_tokens=40)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        first = await resp.content.readline()
        # The backend is still generating (40 tokens at 20/s) when the first line is here.
        assert sims[0].stats.active == 1 and sims[0].stats.completed == 0
        assert json.loads(first)["done"] is False
        rest = await resp.read()
    assert json.loads(rest.splitlines()[-1])["done"] is True


async def test_client_disconnect_closes_the_upstream_stream(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=10, answer_tokens=200)  # a 20 s answer
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as client:
        resp = await client.post(proxy.url + "/api/chat", json=body)
        await resp.content.readline()
        resp.close()  # the user pressed stop
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1, timeout=3)
    assert sims[0].stats.active == 0 and sims[0].stats.completed == 0


async def test_client_disconnect_before_the_first_byte_closes_upstream(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0, first_token_delay=30)  # long prefill
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {"model": "gpt-oss:20b", "prompt": "hi", "stream": False}
    async with aiohttp.ClientSession() as client:
        task = asyncio.create_task(client.post(proxy.url + "/api/generate", json=body))
        await sims[0].wait_until(lambda: sims[0].stats.active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1, timeout=3)


async def test_backend_status_and_error_body_pass_through(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("emb", ("embeddinggemma",), sims)))
    body = {"model": "embeddinggemma", "messages": [{"role": "user", "content": "x"}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 400
        assert "does not support chat" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # Spliced from the socket callback:
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
        # Through the plain relay (an SSE stream whose end the splice would not know):
        ("/v1/responses", {"input": "hi", "stream": True}),
    ],
)
async def test_a_client_leaving_mid_stream_is_not_logged_as_an_error(
    start_sims: StartSims,
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: dict[str, object],
) -> None:
    sims = await start_sims(1, tokens_per_second=50, answer_tokens=500)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    async with aiohttp.ClientSession() as client:
        resp = await client.post(proxy.url + path, json={"model": "gpt-oss:20b", **body})
        await resp.content.readline()
        resp.close()
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1, timeout=3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
async def cut_backend() -> AsyncIterator[str]:
    """A backend that promises a whole answer of 400 bytes, sends 40 and hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request's head; the body is not needed
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        writer.write(head + b'{"model":"m","message":{"role":"assista')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


async def test_a_whole_answer_cut_short_is_a_clean_502(
    cut_backend: str, start_proxy: StartProxy
) -> None:
    # stream:false: the proxy sends a whole answer only once it is all in, so a backend
    # that dies half-way leaves nothing sent and the client can be told plainly.
    proxy = await start_proxy(
        make_settings(GroupSettings(name="g", models=("m",), endpoints=(cut_backend,)))
    )
    body = {"model": "m", "stream": False, "messages": [{"role": "user", "content": "x"}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert "backend" in error


async def test_a_whole_answer_is_passed_through_with_its_length(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {"model": "gpt-oss:20b", "stream": False, "prompt": "hi"}
    async with proxy.http.post(proxy.url + "/api/generate", json=body) as resp:
        whole = await resp.read()
        assert resp.headers["Content-Length"] == str(len(whole))
        assert "Transfer-Encoding" not in resp.headers
    assert json.loads(whole)["done"] is True
