"""Conversations recorded through the proxy into MongoDB (SecantusDB), and what happens
when MongoDB goes away: streams go on, records wait in the spool, nothing is lost."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest
from conftest import Proxy, StartProxy, StartSims, group, make_settings, until
from identity import store_settings
from mongo import MongoServer

from olbproxy.app import RECORDER, create_app
from olbproxy.exchange import Exchange
from olbproxy.persistence.record import record_of
from olbproxy.persistence.recorder import Recorder
from olbproxy.settings import Settings
from olbproxy.simulator import OllamaSimulator
from olbproxy.store import Message, Room, Store
from olbproxy.store.backends import open_store

MODEL = "gpt-oss:20b"
USER = "anonymous"  # authentication is off in these tests


def persisted(sims: list[OllamaSimulator], uri: str, spool: Path, **store: Any) -> Settings:
    # The recorder on the relay's loop, where these tests reach into it; the same
    # recorder in the recording process is tested in test_handoff.py.
    store.setdefault("recorder", "loop")
    return make_settings(
        group("20b", (MODEL,), sims),
        store=store_settings(uri, spool_dir=str(spool), timeout=1.0, **store),
    )


async def start(start_proxy: StartProxy, settings: Settings) -> Proxy:
    app = await create_app(settings)
    recorder = app[RECORDER]
    assert isinstance(recorder, Recorder)
    recorder.backoff = (0.05, 0.5)  # tests wait for MongoDB's return, not for backoff
    return await start_proxy(settings, app)


def recorder_of(proxy: Proxy) -> Recorder:
    recorder = proxy.app[RECORDER]
    assert isinstance(recorder, Recorder)
    return recorder


async def settled(proxy: Proxy, within: float = 10.0) -> None:
    recorder = recorder_of(proxy)
    await until(lambda: recorder.idle, within=within)


Reader = Callable[[str], Awaitable[Store]]


@pytest.fixture
async def reader(request: pytest.FixtureRequest) -> AsyncIterator[Reader]:
    """Opens a store of its own on a URI, to read what the proxy wrote."""
    opened: list[Store] = []

    async def open_on(uri: str) -> Store:
        store = open_store(Settings(store=store_settings(uri, timeout=5.0)))
        opened.append(store)
        return store

    yield open_on
    for store in opened:
        await store.close()


async def conversations(store: Store, user: str = USER) -> list[tuple[Room, list[Message]]]:
    rooms = await store.rooms.list(user, limit=100)
    return [(room, await store.messages.list(room.id, limit=100)) for room in rooms]


class Conversation:
    """A client that sends the whole history every time, as Ollama clients do."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.messages: list[dict[str, Any]] = []

    async def say(self, text: str, *, stream: bool = False) -> str:
        self.messages.append({"role": "user", "content": text})
        body = {"model": MODEL, "messages": self.messages, "stream": stream}
        async with self.http.post(self.url + "/api/chat", json=body) as resp:
            assert resp.status == 200, await resp.text()
            lines = [json.loads(line) for line in (await resp.read()).splitlines() if line]
        assert lines[-1]["done"] is True  # the whole answer came through
        content = "".join(line["message"]["content"] for line in lines)
        self.messages.append({"role": "assistant", "content": content})
        return content


async def test_a_multi_turn_chat_through_the_ollama_client_is_one_room(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start(start_proxy, persisted(sims, mongo_uri, tmp_path / "spool"))
    async with ollama.AsyncClient(host=proxy.url) as client:
        messages: list[Any] = [{"role": "user", "content": "서울 날씨 어때?"}]
        first = await client.chat(model=MODEL, messages=messages)
        messages += [first.message, {"role": "user", "content": "내일은?"}]
        stream = await client.chat(model=MODEL, messages=messages, stream=True)
        second = "".join([part.message.content or "" async for part in stream])
        messages += [
            {"role": "assistant", "content": second},
            {"role": "user", "content": "고마워"},
        ]
        third = await client.chat(model=MODEL, messages=messages, think=True)
        await client.chat(model=MODEL, messages=[{"role": "user", "content": "다른 이야기"}])
    await settled(proxy)

    store = await reader(mongo_uri)
    (other, other_turns), (weather, turns) = await conversations(store)
    assert (other.title, other.turns, len(other_turns)) == ("다른 이야기", 1, 1)
    assert (weather.title, weather.turns, weather.model) == ("서울 날씨 어때?", 3, MODEL)
    assert [(m.seq, m.input, m.status, m.kind) for m in turns] == [
        (1, "서울 날씨 어때?", "done", "turn"),
        (2, "내일은?", "done", "turn"),
        (3, "고마워", "done", "turn"),
    ]
    answers = [m.answer for m in turns]
    assert answers[0] is not None and answers[0]["content"] == first.message.content
    assert answers[1] is not None and answers[1]["content"] == second
    assert answers[2] is not None and answers[2]["content"] == third.message.content
    assert answers[2]["thinking"] == third.message.thinking
    assert turns[0].counters is not None and turns[0].counters["eval_count"] == first.eval_count
    assert turns[1].ttft_ms is not None and turns[1].done_reason == "stop"
    assert {m.backend for m in turns} == {sims[0].url.removeprefix("http://")}
    assert turns[0].user_id == USER and turns[0].full_hash == turns[1].prefix_hash


async def test_tool_calls_are_recorded_and_the_tool_result_continues_the_room(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start(start_proxy, persisted(sims, mongo_uri, tmp_path / "spool"))
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "the weather in a city",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    async with ollama.AsyncClient(host=proxy.url) as client:
        messages: list[Any] = [{"role": "user", "content": "call: Seoul"}]
        asked = await client.chat(model=MODEL, messages=messages, tools=tools, stream=False)
        assert asked.message.tool_calls
        messages += [asked.message, {"role": "tool", "content": "sunny", "tool_name": "weather"}]
        await client.chat(model=MODEL, messages=messages, tools=tools)
    await settled(proxy)

    ((room, turns),) = await conversations(await reader(mongo_uri))
    assert room.turns == 2
    assert turns[0].answer is not None
    (call,) = turns[0].answer["tool_calls"]
    assert call["function"]["name"] == "weather"
    assert call["function"]["arguments"] == {"query": "Seoul"}
    assert (turns[1].input_role, turns[1].input) == ("tool", "sunny")


async def test_a_streamed_openai_chat_is_assembled_from_its_sse_frames(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start(start_proxy, persisted(sims, mongo_uri, tmp_path / "spool"))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello from the openai sdk"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    received = []
    async with proxy.http.post(proxy.url + "/v1/chat/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    received.append(choice["delta"].get("content") or "")
    await settled(proxy)

    ((room, (turn,)),) = await conversations(await reader(mongo_uri))
    assert (turn.endpoint, turn.status, turn.input) == (
        "/v1/chat/completions",
        "done",
        "hello from the openai sdk",
    )
    assert turn.answer is not None and turn.answer["content"] == "".join(received)
    assert turn.counters is not None and turn.counters["eval_count"]
    assert room.title == "hello from the openai sdk"


async def test_generate_threads_on_the_context_it_sends_back(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start(start_proxy, persisted(sims, mongo_uri, tmp_path / "spool"))
    async with ollama.AsyncClient(host=proxy.url) as client:
        first = await client.generate(model=MODEL, prompt="once upon a time")
        await client.generate(model=MODEL, prompt="and then?", context=first.context)
        await client.generate(model=MODEL, prompt="a fresh start")
        await client.generate(model=MODEL, prompt="def f(", suffix="):", raw=True)
    await settled(proxy)

    found = {room.title: m for room, m in await conversations(await reader(mongo_uri))}
    assert sorted(found) == ["a fresh start", "once upon a time"]  # autocompletion: no room
    assert [(m.kind, m.seq, m.input) for m in found["once upon a time"]] == [
        ("generate", 1, "once upon a time"),
        ("generate", 2, "and then?"),
    ]
    assert recorder_of(proxy).stats["written"] == 4


async def test_a_cancelled_stream_is_stored_as_cancelled_with_its_partial_answer(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    (sim,) = await start_sims(1, tokens_per_second=50, answer_tokens=200)
    proxy = await start(start_proxy, persisted([sim], mongo_uri, tmp_path / "spool"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "tell me a long story"}]}
    resp = await proxy.http.post(proxy.url + "/api/chat", json=body)
    seen = [json.loads(await resp.content.readline()) for _ in range(3)]
    resp.close()  # the user pressed stop
    await sim.wait_until(lambda: sim.stats.cancelled == 1)
    await settled(proxy)

    ((room, (turn,)),) = await conversations(await reader(mongo_uri))
    assert turn.status == "cancelled"
    assert turn.answer is not None
    partial = turn.answer["content"]
    assert partial.startswith("".join(s["message"]["content"] for s in seen))
    assert 0 < len(partial.split()) < 200
    assert room.turns == 1


async def test_without_content_only_metadata_is_kept_and_threads_still_work(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = persisted(sims, mongo_uri, tmp_path / "spool", store_content=False)
    proxy = await start(start_proxy, settings)
    chat = Conversation(proxy.http, proxy.url)
    await chat.say("my secret plan")
    await chat.say("more secrets")
    await settled(proxy)

    ((room, turns),) = await conversations(await reader(mongo_uri))
    assert room.turns == 2 and "secret" not in room.title
    assert all(m.input is None and m.answer is None for m in turns)
    assert all(m.full_hash and m.counters for m in turns)


async def test_a_full_queue_sends_records_to_the_spool_and_they_still_arrive(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = persisted(sims, mongo_uri, tmp_path / "spool", queue_size=0)
    proxy = await start(start_proxy, settings)
    chat = Conversation(proxy.http, proxy.url)
    for text in ("one", "two", "three"):
        await chat.say(text)
    await settled(proxy)

    recorder = recorder_of(proxy)
    assert recorder.stats["spooled"] == 3 and recorder.stats["replayed"] == 3
    ((room, turns),) = await conversations(await reader(mongo_uri))
    assert [m.input for m in turns] == ["one", "two", "three"] and room.turns == 3
    assert not list((tmp_path / "spool").glob("*.jsonl"))


async def test_records_still_queued_at_shutdown_are_written_before_the_store_closes(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start(start_proxy, persisted(sims, mongo_uri, tmp_path / "spool"))
    recorder = recorder_of(proxy)
    recorder.linger = 3600.0  # the writer would wait an hour for a fuller batch
    await Conversation(proxy.http, proxy.url).say("last words")
    await until(lambda: recorder.backlog()["queue"] == 1)
    await proxy.stop()

    ((room, (turn,)),) = await conversations(await reader(mongo_uri))
    assert (room.title, turn.input) == ("last words", "last words")
    assert recorder.stats["written"] == 1 and not recorder.stats["spooled"]


async def test_conversations_go_on_while_mongodb_is_down_and_all_land_exactly_once(
    start_sims: StartSims,
    start_proxy: StartProxy,
    own_mongo: MongoServer,
    tmp_path: Path,
    reader: Reader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="olbproxy.persistence.recorder")
    sims = await start_sims(1, tokens_per_second=0)
    uri = own_mongo.uri.replace("/?", "/faults?")
    spool = tmp_path / "spool"
    proxy = await start(start_proxy, persisted(sims, uri, spool))
    recorder = recorder_of(proxy)
    chats = [Conversation(proxy.http, proxy.url) for _ in range(6)]
    for i, chat in enumerate(chats[:2]):
        await chat.say(f"conversation {i}")
        await chat.say(f"conversation {i}, second turn")
    await settled(proxy)

    await own_mongo.stop()
    # Streams complete while MongoDB is gone; their records wait on disk.
    answer = await chats[2].say("conversation 2", stream=True)
    assert "conversation 2" in answer
    await until(lambda: recorder.spool.depth == 1, within=10)
    assert recorder.spooling and list(spool.glob("*.jsonl"))
    await chats[2].say("conversation 2, second turn", stream=True)
    for i, chat in enumerate(chats[3:5], start=3):
        await chat.say(f"conversation {i}")
        await chat.say(f"conversation {i}, second turn")
    await chats[0].say("conversation 0, third turn")  # continues a room written before
    # A named room whose owner nobody knows: no lookup while MongoDB is known to be down.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "named"}], "stream": False}
    headers = {"X-Room-Id": "named-in-outage"}
    async with proxy.http.post(proxy.url + "/api/chat", json=body, headers=headers) as resp:
        assert resp.status == 200
    await until(lambda: recorder.spool.depth == 8, within=10)
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert 'olbproxy_persistence_backlog{stage="spool"} 8.0' in await resp.text()

    await own_mongo.start()
    # New records line up behind the spool until it has been replayed.
    await chats[5].say("conversation 5")
    await chats[5].say("conversation 5, second turn")
    await settled(proxy, within=30)

    found = await conversations(await reader(uri))
    titles = sorted(room.title for room, _ in found)
    assert titles == [*(f"conversation {i}" for i in range(6)), "named"]
    assert {room.id for room, _ in found if room.title == "named"} == {"named-in-outage"}
    turns = {room.title: [(m.seq, m.input) for m in messages] for room, messages in found}
    assert turns["conversation 0"] == [
        (1, "conversation 0"),
        (2, "conversation 0, second turn"),
        (3, "conversation 0, third turn"),
    ]
    for i in range(1, 6):
        assert turns[f"conversation {i}"] == [
            (1, f"conversation {i}"),
            (2, f"conversation {i}, second turn"),
        ]
    assert all(room.turns == len(messages) for room, messages in found)
    assert not list(spool.glob("*.jsonl"))
    assert "spooling records to" in caplog.text and "spool replayed" in caplog.text


async def test_a_spool_left_by_a_stopped_proxy_is_replayed_by_the_next_one(
    start_sims: StartSims,
    start_proxy: StartProxy,
    own_mongo: MongoServer,
    tmp_path: Path,
    reader: Reader,
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    uri = own_mongo.uri.replace("/?", "/restart?")
    spool = tmp_path / "spool"
    settings = persisted(sims, uri, spool)
    first = await start(start_proxy, settings)
    kept = Conversation(first.http, first.url)
    await kept.say("before the outage")
    await settled(first)

    await own_mongo.stop()
    await kept.say("during the outage")
    chats = [Conversation(first.http, first.url) for _ in range(2)]
    for i, chat in enumerate(chats):
        await chat.say(f"new {i}")
        await chat.say(f"new {i}, again")
    await until(lambda: recorder_of(first).spool.depth == 5, within=10)
    await first.stop()
    assert list(spool.glob("*.jsonl"))

    await own_mongo.start()
    second = await start(start_proxy, settings)
    await settled(second, within=30)
    kept.http, kept.url = second.http, second.url
    await kept.say("after the restart")  # found through the database: caches are new
    await settled(second)

    found = {room.title: messages for room, messages in await conversations(await reader(uri))}
    assert sorted(found) == ["before the outage", "new 0", "new 1"]
    assert [m.input for m in found["before the outage"]] == [
        "before the outage",
        "during the outage",
        "after the restart",
    ]
    assert [m.seq for m in found["before the outage"]] == [1, 2, 3]
    assert [len(found[f"new {i}"]) for i in range(2)] == [2, 2]
    assert not list(spool.glob("*.jsonl"))


def spool_line(text: str, started: float) -> bytes:
    exchange = Exchange(
        endpoint="/api/chat",
        model=MODEL,
        user=USER,
        user_name=USER,
        body={"model": MODEL, "messages": [{"role": "user", "content": text}]},
        started_at=started,
    )
    exchange.chunks = [
        json.dumps(
            {"message": {"role": "assistant", "content": f"re: {text}"}, "done": True}
        ).encode()
    ]
    exchange.outcome, exchange.status, exchange.ended = "done", 200, exchange.t0 + 0.1
    return record_of(exchange, store_content=True).line()


async def test_a_crash_shaped_spool_replays_its_complete_lines(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str, tmp_path: Path, reader: Reader
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    complete = [spool_line("first", 1_750_000_000.0), spool_line("second", 1_750_000_001.0)]
    cut = spool_line("third", 1_750_000_002.0)[:40]  # the crash came mid-write
    (spool / "0000000001.jsonl").write_bytes(b"".join(line + b"\n" for line in complete) + cut)
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start(start_proxy, persisted(sims, mongo_uri, spool))
    await settled(proxy)

    found = await conversations(await reader(mongo_uri))
    assert sorted(room.title for room, _ in found) == ["first", "second"]
    assert recorder_of(proxy).stats["replayed"] == 2
    assert not list(spool.glob("*.jsonl"))


async def test_recording_can_be_switched_off(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    base = make_settings(group("20b", ("gpt-oss:20b",), sims))
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), sims), store=replace(base.store, record=False))
    )
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 200
        await resp.read()
    recorder = proxy.app[RECORDER]
    assert recorder.stats["written"] == 0 and recorder.backlog() == {"queue": 0, "spool": 0}
    async with proxy.http.get(proxy.url + "/api/rooms") as resp:
        assert (await resp.json())["rooms"] == []
