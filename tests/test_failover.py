"""Faults on real sockets: dead, busy, hung and dying backends; recovery; slot limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from conftest import StartProxy, StartSims, group, make_settings, until

from olbproxy.app import POOL

CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}


async def chat(
    http: aiohttp.ClientSession, url: str, **extra: object
) -> tuple[int, list[dict[str, Any]]]:
    async with http.post(url + "/api/chat", json={**CHAT, **extra}) as resp:
        body = await resp.read()
        if resp.content_type == "application/x-ndjson":
            return resp.status, [json.loads(line) for line in body.splitlines()]
        return resp.status, [json.loads(body)]


async def test_a_refused_connection_moves_the_request_and_takes_the_backend_out(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    await sims[0].stop()
    for _ in range(4):
        status, lines = await chat(proxy.http, proxy.url)
        assert status == 200 and lines[-1]["done"] is True
    assert sum(1 for r in sims[1].requests if r.path == "/api/chat") == 4
    # One refused connection is enough to take it out of the rotation.
    dead = proxy.app[POOL].backends[sims[0].url]
    assert not dead.healthy and "cannot connect" in str(dead.last_error)


async def test_a_busy_503_moves_the_request_to_the_next_backend(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    sims[0].faults.busy = -1
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    for _ in range(3):
        status, lines = await chat(proxy.http, proxy.url)
        assert status == 200
        assert str(lines[0]["message"]["content"]).startswith("[sim2]")


async def test_every_backend_busy_gives_503_with_retry_after(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    for sim in sims:
        sim.faults.busy = -1
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        assert "server busy" in (await resp.json())["error"]


async def test_a_hung_backend_times_out_with_504(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    sims[0].faults.hang = True
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims, first_byte_timeout=0.3))
    proxy = await start_proxy(settings)
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 504
        assert "first-byte timeout" in (await resp.json())["error"]
    # The proxy hung up on the backend instead of leaving it generating.
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1)


async def test_a_stalled_stream_ends_with_an_error_line(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    sims[0].faults.stall_after_tokens = 2
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims, idle_timeout=0.3))
    proxy = await start_proxy(settings)
    status, lines = await chat(proxy.http, proxy.url)
    assert status == 200
    assert [line.get("done") for line in lines[:2]] == [False, False]
    assert lines[-1] == {"error": "backend sent nothing for 0.3s"}
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1)


async def test_a_backend_dying_mid_stream_gives_a_final_error_line(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    sims[0].faults.drop_after_tokens = 3
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    status, lines = await chat(proxy.http, proxy.url)
    assert status == 200
    assert len(lines) == 4 and not any(line.get("done") for line in lines)
    assert "backend connection lost" in str(lines[-1]["error"])


async def test_a_backend_dying_mid_sse_stream_gives_an_error_event(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    sims[0].faults.drop_after_tokens = 3
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {**CHAT, "stream": True}
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        text = (await resp.read()).decode()
    frames = [f for f in text.split("\n\n") if f.strip()]
    last = json.loads(frames[-1].removeprefix("data: "))
    assert last["error"]["type"] == "api_error"
    assert "[DONE]" not in text


async def test_killing_a_backend_under_load_fails_no_request_that_had_not_started(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(3, tokens_per_second=0, first_token_delay=0.3)
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims, slots=4))
    proxy = await start_proxy(settings)
    tasks = [asyncio.create_task(chat(proxy.http, proxy.url)) for _ in range(24)]
    # Kill one backend while every request is still waiting for its first token.
    await sims[0].wait_until(lambda: sims[0].stats.active >= 1)
    await sims[0].stop()
    results = await asyncio.gather(*tasks)
    assert all(status == 200 and lines[-1].get("done") is True for status, lines in results)


async def test_the_group_recovers_when_the_backend_returns(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    # Round-robin: the point is that the backend takes its turn again. (Cache-aware
    # placement would rightly keep to the warm one while it has a free slot.)
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims, placement="round_robin"))
    proxy = await start_proxy(settings)
    port = int(sims[0].url.rsplit(":", 1)[1])
    await sims[0].stop()
    await chat(proxy.http, proxy.url)  # marks it down
    backend = proxy.app[POOL].backends[sims[0].url]
    assert not backend.healthy
    sims[0].requests.clear()
    await sims[0].start(port=port)
    # Health probes (every 0.2 s in tests) bring it back; then it takes its turn again.
    await sims[0].wait_until(lambda: any(r.path == "/api/version" for r in sims[0].requests))
    await until(lambda: backend.healthy)
    for _ in range(2):
        status, _ = await chat(proxy.http, proxy.url)
        assert status == 200
    assert sum(1 for r in sims[0].requests if r.path == "/api/chat") == 1


async def test_a_group_with_no_healthy_backend_answers_503_at_once(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    for sim in sims:
        await sim.stop()
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 503
        assert "no healthy backend" in (await resp.json())["error"]


async def test_more_streams_than_slots_never_exceed_the_limit(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=200, answer_tokens=10)
    settings = make_settings(
        group("20b", ("gpt-oss:20b",), sims, slots=2, queue_size=20, queue_timeout=30)
    )
    proxy = await start_proxy(settings)
    results = await asyncio.gather(*(chat(proxy.http, proxy.url) for _ in range(40)))
    statuses = sorted(status for status, _ in results)
    served = [lines for status, lines in results if status == 200]
    # 4 slots + 20 queued can be taken at once; the rest are told 503 with Retry-After.
    assert all(s in (200, 503) for s in statuses)
    assert all(lines[-1].get("done") is True for lines in served)
    assert len(served) >= 24
    assert all(sim.stats.max_active <= 2 for sim in sims)
    assert sum(sim.stats.completed for sim in sims) == len(served)


async def test_a_queued_request_whose_client_left_leaves_the_queue(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=5, answer_tokens=50)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims, slots=1)))
    first = await proxy.http.post(proxy.url + "/api/chat", json=CHAT)
    async with aiohttp.ClientSession() as other:
        queued = asyncio.create_task(other.post(proxy.url + "/api/chat", json=CHAT))
        pool = proxy.app[POOL]
        await until(lambda: pool.groups["20b"].admission.waiting == 1)
        queued.cancel()
    await until(lambda: pool.groups["20b"].admission.waiting == 0)
    first.close()
    await sims[0].wait_until(lambda: sims[0].stats.cancelled == 1)
    assert sum(1 for r in sims[0].requests if r.path == "/api/chat") == 1
