"""Recording in a process of its own (store.recorder: process): the relay hands each
finished exchange over as one frame, and nothing is lost when that process stops, dies,
falls behind, or the proxy stops before it caught up."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from conftest import Proxy, StartProxy, StartSims, group, make_settings, until
from identity import store_settings
from test_recorder import MODEL, Conversation, Reader, conversations, reader  # noqa: F401

from olbproxy.app import RECORDER, create_app
from olbproxy.errors import StartupError
from olbproxy.exchange import Exchange, Placed
from olbproxy.persistence import frame
from olbproxy.persistence.handoff import Handoff
from olbproxy.persistence.pace import CALM
from olbproxy.persistence.record import record_of
from olbproxy.persistence.spool import Spool
from olbproxy.prompt import prompt_of
from olbproxy.settings import Settings
from olbproxy.simulator import OllamaSimulator


def recorded(sims: list[OllamaSimulator], uri: str, spool: Path, **store: Any) -> Settings:
    return make_settings(
        group("20b", (MODEL,), sims),
        store=store_settings(uri, spool_dir=str(spool), timeout=1.0, recorder="process", **store),
    )


StartRecording = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def start(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path
) -> StartRecording:
    """A proxy recording through its recording process (store settings as keywords)."""

    async def started(**store: Any) -> Proxy:
        sims = await start_sims(1, tokens_per_second=0)
        return await start_proxy(recorded(sims, mongo_uri, tmp_path / "spool", **store))

    return started


def handoff_of(app: web.Application) -> Handoff:
    recorder = app[RECORDER]
    assert isinstance(recorder, Handoff)
    return recorder


def worker_pid(app: web.Application) -> int:
    pid = handoff_of(app).pid
    assert pid is not None and pid != os.getpid()
    return pid


async def settled(app: web.Application, within: float = 20.0) -> None:
    recorder = handoff_of(app)
    await until(lambda: recorder.idle, within=within)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's process may not build a record: that is the recording process's work."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a record was built in the relay's process")

    monkeypatch.setattr("olbproxy.persistence.recorder.record_of", refuse)


# -- the frame --------------------------------------------------------------------------


def exchanges() -> list[Exchange]:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "안녕"}], "stream": True}
    prompt = prompt_of("/api/chat", MODEL, chat)
    assert prompt is not None
    native = Exchange(
        "/api/chat",
        model=MODEL,
        group="20b",
        user="u1",
        user_name="kim",
        stream=True,
        marked_end=True,
        request_body=orjson.dumps(chat),
        backend="http://127.0.0.1:11435",
        status=200,
        outcome="done",
        room_id="r" * 32,
        counters={"eval_count": 2},
        placed=Placed("sticky", prompt, 12.0),
    )
    native.first_byte, native.ended = native.t0 + 0.25, native.t0 + 1.5
    native.chunks = [
        b'{"message":{"role":"assistant","content":"\xec\x95\x88"}}\n{"message":{"role":"assist',
        b'ant","content":"\xeb\x85\x95"},"done":false}\n',
        b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
        b'"eval_count":2,"prompt_eval_count":9}\n',
    ]
    sse = Exchange("/v1/chat/completions", model=MODEL, stream=True, sse=True, status=200)
    sse.body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    sse.outcome, sse.ended = "done", sse.t0 + 0.5
    sse.chunks = [
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
        b'data: {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n",
    ]
    generate = Exchange("/api/generate", model=MODEL, status=502, outcome="error")
    generate.request_body = b'{"model":"gpt-oss:20b","prompt":"x","context":[1,2,3]}'
    generate.error = "all backends failed"
    return [native, sse, generate]


@pytest.mark.parametrize("exchange", exchanges(), ids=["native", "sse", "generate-error"])
def test_a_frame_carries_everything_the_record_is_made_of(exchange: Exchange) -> None:
    kind, copy = frame.decode(frame.encode(exchange))
    assert kind == frame.NEW and isinstance(copy, Exchange)
    for content in (True, False):
        assert record_of(copy, store_content=content) == record_of(exchange, store_content=content)


def test_a_resent_or_forget_frame_says_so_and_a_broken_head_is_refused() -> None:
    exchange = exchanges()[0]
    kind, _ = frame.decode(frame.encode(exchange, frame.RESENT))
    assert kind == frame.RESENT
    assert frame.decode(frame.forget("a" * 32)) == (frame.FORGET, "a" * 32)
    with pytest.raises(frame.FrameError):
        frame.size(b"\x07" + bytes(12))
    whole = frame.encode(exchange)
    with pytest.raises(frame.FrameError):
        frame.decode(whole[:-1])


# -- the process --------------------------------------------------------------------------


async def test_a_conversation_is_recorded_by_the_process_not_by_the_relay(
    start: StartRecording,
    mongo_uri: str,
    reader: Reader,  # noqa: F811
    sent: None,
) -> None:
    proxy = await start()
    pid = worker_pid(proxy.app)
    if hasattr(os, "SCHED_IDLE"):  # Linux: it runs only on a core nothing else wants
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    chat = Conversation(proxy.http, proxy.url)
    await chat.say("첫 번째")
    await chat.say("두 번째", stream=True)
    await chat.say("세 번째")
    await settled(proxy.app)

    [(room, turns)] = await conversations(await reader(mongo_uri))
    assert (room.title, room.turns) == ("첫 번째", 3)
    assert [(m.seq, m.input) for m in turns] == [(1, "첫 번째"), (2, "두 번째"), (3, "세 번째")]
    assert handoff_of(proxy.app).stats["written"] == 3


async def test_a_recording_process_that_dies_is_replaced_and_nothing_is_lost(
    start: StartRecording,
    mongo_uri: str,
    reader: Reader,  # noqa: F811
) -> None:
    proxy = await start()
    first = worker_pid(proxy.app)
    chat = Conversation(proxy.http, proxy.url)
    await chat.say("one")
    await settled(proxy.app)
    os.kill(first, signal.SIGSTOP)  # it reads nothing more...
    await chat.say("two")
    await chat.say("three", stream=True)
    assert handoff_of(proxy.app).backlog()["queue"] == 2
    os.kill(first, signal.SIGKILL)  # ...and dies with two exchanges unsettled
    await until(lambda: handoff_of(proxy.app).pid not in (None, first), within=10)
    await chat.say("four")
    await settled(proxy.app)

    [(room, turns)] = await conversations(await reader(mongo_uri))
    assert room.turns == 4
    assert [(m.seq, m.input) for m in turns] == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]


async def test_when_the_process_falls_behind_records_wait_on_disk_and_keep_their_order(
    start: StartRecording,
    mongo_uri: str,
    tmp_path: Path,
    reader: Reader,  # noqa: F811
) -> None:
    proxy = await start(queue_bytes=1)  # the first frame fills it
    pid = worker_pid(proxy.app)
    os.kill(pid, signal.SIGSTOP)
    chat = Conversation(proxy.http, proxy.url)
    try:
        for turn in range(1, 8):
            await chat.say(f"turn {turn}")  # answered at once: recording is not in the way
        handoff = handoff_of(proxy.app)
        await until(lambda: handoff.overflow.depth == 6)
        assert handoff.backlog() == {"queue": 1, "spool": 6}
        assert list((tmp_path / "spool" / "handoff").glob("*.jsonl"))  # on disk, fsync'd
    finally:
        os.kill(pid, signal.SIGCONT)
    await chat.say("turn 8")
    await settled(proxy.app)

    [(room, turns)] = await conversations(await reader(mongo_uri))
    assert room.turns == 8
    assert [m.input for m in turns] == [f"turn {n}" for n in range(1, 9)]
    assert not list((tmp_path / "spool" / "handoff").glob("*.jsonl"))


async def test_the_memory_bound_weighs_frames_by_their_bytes_not_their_number(
    start: StartRecording,
) -> None:
    proxy = await start(queue_bytes=64 * 1024)
    pid = worker_pid(proxy.app)
    os.kill(pid, signal.SIGSTOP)
    handoff = handoff_of(proxy.app)
    try:
        small = Conversation(proxy.http, proxy.url)
        for turn in range(1, 11):
            await small.say(f"turn {turn}")
        assert handoff.backlog() == {"queue": 10, "spool": 0}  # ten small frames fit
        await Conversation(proxy.http, proxy.url).say("x" * 70_000)  # one that fills it
        await small.say("turn 11")
        await until(lambda: handoff.overflow.depth == 1)
        assert handoff.backlog() == {"queue": 11, "spool": 1}
    finally:
        os.kill(pid, signal.SIGCONT)
    await settled(proxy.app)


@pytest.fixture
async def own_proxy() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


async def serve(settings: Settings, runners: list[web.AppRunner]) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(await create_app(settings), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runners.append(runner)
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_records_the_process_had_not_settled_at_a_stop_are_sent_by_the_next_start(
    start_sims: StartSims,
    mongo_uri: str,
    tmp_path: Path,
    reader: Reader,  # noqa: F811
    own_proxy: list[web.AppRunner],
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = recorded(sims, mongo_uri, tmp_path / "spool")
    runner, url = await serve(settings, own_proxy)
    handoff = handoff_of(runner.app)
    handoff.stop_seconds = 0.5  # how long the stop waits for a process that cannot answer
    os.kill(worker_pid(runner.app), signal.SIGSTOP)
    async with aiohttp.ClientSession() as http:
        chat = Conversation(http, url)
        await chat.say("before the stop")
        await chat.say("still before")
    await runner.cleanup()  # the stopped process is killed; its two records stay on disk
    own_proxy.remove(runner)
    assert list((tmp_path / "spool" / "handoff").glob("*.jsonl"))

    runner, url = await serve(settings, own_proxy)
    async with aiohttp.ClientSession() as http:
        await Conversation(http, url).say("after the start")
    await settled(runner.app)
    rooms = await conversations(await reader(mongo_uri))
    inputs = sorted([m.input for _, turns in rooms for m in turns], key=str)
    assert inputs == ["after the start", "before the stop", "still before"]
    (chatted,) = [turns for _, turns in rooms if len(turns) == 2]
    assert [m.seq for m in chatted] == [1, 2]


async def test_a_spool_another_proxy_holds_stops_the_start_with_the_reason(
    start_sims: StartSims, mongo_uri: str, tmp_path: Path
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    (tmp_path / "spool").mkdir()
    other = Spool(tmp_path / "spool")
    await other.open()  # another proxy's recording process, in the same directory
    try:
        app = await create_app(recorded(sims, mongo_uri, tmp_path / "spool"))
        runner = web.AppRunner(app)
        with pytest.raises(StartupError, match=r"spool_dir: .* is in use by another olbproxy"):
            await runner.setup()
        await runner.cleanup()
    finally:
        await other.close()


async def test_while_the_relay_is_busy_recording_waits_and_catches_up_after(
    start: StartRecording,
    mongo_uri: str,
    reader: Reader,  # noqa: F811
) -> None:
    proxy = await start(defer=30.0)
    handoff = handoff_of(proxy.app)
    load = [0.9]  # cores the relay's process uses, as the pacing sees them
    handoff.pace.share = lambda: load[0]
    await until(lambda: handoff.pace.deferring)
    chat = Conversation(proxy.http, proxy.url)
    for turn in range(1, 4):
        await chat.say(f"turn {turn}")
    store = await reader(mongo_uri)
    assert handoff.backlog()["queue"] == 3
    await asyncio.sleep(0.5)  # two looks of the pacing: still busy, still waiting
    assert await conversations(store) == []
    load[0] = CALM / 2
    await settled(proxy.app)
    [(_, turns)] = await conversations(store)
    assert [m.input for m in turns] == ["turn 1", "turn 2", "turn 3"]


async def test_recording_waits_for_a_busy_relay_no_longer_than_store_defer(
    start: StartRecording,
    mongo_uri: str,
    reader: Reader,  # noqa: F811
) -> None:
    proxy = await start(defer=1.0)
    handoff = handoff_of(proxy.app)
    handoff.pace.share = lambda: 0.95  # busy, and it stays so
    await until(lambda: handoff.pace.deferring)
    await Conversation(proxy.http, proxy.url).say("recorded all the same")
    await settled(proxy.app, within=5)
    assert not handoff.pace.deferring  # and for store.defer seconds it does not wait again
    [(_, turns)] = await conversations(await reader(mongo_uri))
    assert [m.input for m in turns] == ["recorded all the same"]
