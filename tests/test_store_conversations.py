"""The store's rooms and messages: the memory and MongoDB stores keep the same contract."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from identity import database_of, store_settings

from olbproxy.errors import ProxyError
from olbproxy.settings import Settings
from olbproxy.store import Message, Room, RoomStep, Served, Store
from olbproxy.store.backends import open_store
from olbproxy.store.mongo import MongoStore

T0 = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def room(room_id: str, user: str = "u1", updated: float = 0, **kw: Any) -> Room:
    return Room(
        id=room_id,
        user_id=user,
        user_name=user.upper(),
        title=f"title {room_id}",
        model="gpt-oss:20b",
        created_at=at(0),
        updated_at=at(updated),
        **kw,
    )


def message(message_id: str, room_id: str | None = "r1", started: float = 0, **kw: Any) -> Message:
    values: dict[str, Any] = {
        "user_id": "u1",
        "kind": "turn",
        "endpoint": "/api/chat",
        "status": "done",
        "started_at": at(started),
        "ended_at": at(started + 1),
        "room_id": room_id,
        "seq": 1,
        **kw,
    }
    return Message(id=message_id, **values)


async def test_a_message_round_trips_with_every_field(store: Store) -> None:
    full = message(
        "m1",
        seq=3,
        user_name="김",
        task=None,
        model="gpt-oss:20b",
        group="20b",
        backend="127.0.0.1:11435",
        input="안녕하세요",
        input_role="user",
        answer={
            "content": "반갑습니다",
            "thinking": "",
            "tool_calls": [{"function": {"name": "f"}}],
        },
        counters={"eval_count": 12, "prompt_eval_count": 3},
        done_reason="stop",
        ttft_ms=12.5,
        duration_ms=340.25,
        http_status=200,
        error=None,
        placement="sticky",
        prefix_hash="p" * 64,
        full_hash="f" * 64,
        truncated=("input",),
    )
    assert await store.messages.add([full]) == set()
    assert await store.messages.get_many(["m1", "nope"]) == [full]


async def test_adding_twice_keeps_the_first_and_names_the_repeats(store: Store) -> None:
    first = message("m1", input="first")
    assert await store.messages.add([first]) == set()
    again = [dataclasses.replace(first, input="second"), message("m2", started=1)]
    assert await store.messages.add(again) == {"m1"}
    got = {m.id: m for m in await store.messages.get_many(["m1", "m2"])}
    assert got["m1"].input == "first" and "m2" in got


async def test_opening_a_room_is_idempotent_and_progress_only_grows(store: Store) -> None:
    await store.rooms.open([room("r1")])
    await store.rooms.open([dataclasses.replace(room("r1"), title="other", turns=9)])
    got = await store.rooms.get("r1")
    assert got == room("r1")
    await store.rooms.advance([RoomStep("r1", 3, at(30))])
    await store.rooms.advance([RoomStep("r1", 2, at(10)), RoomStep("missing", 1, at(1))])
    got = await store.rooms.get("r1")
    assert got is not None and (got.turns, got.updated_at) == (3, at(30))
    assert await store.rooms.get("missing") is None


async def test_a_rooms_latest_placement_is_kept_and_read_back_oldest_first(store: Store) -> None:
    first = Served("k1" * 16, "127.0.0.1:11435", at(10))
    await store.rooms.open([room("r1", served=first), room("r2"), room("r3")])
    await store.rooms.advance(
        [
            RoomStep("r2", 1, at(20), Served("k2" * 16, "127.0.0.1:11436", at(20))),
            RoomStep("r3", 1, at(5)),  # no placement (an error): none recorded
        ]
    )
    later = Served("k3" * 16, "127.0.0.1:11437", at(30))
    await store.rooms.advance([RoomStep("r1", 2, at(30), later)])
    got = await store.rooms.get("r1")
    assert got is not None and got.served == later
    assert await store.rooms.placements(at(0), limit=10) == [
        ("r2", Served("k2" * 16, "127.0.0.1:11436", at(20))),
        ("r1", later),
    ]
    assert [r for r, _ in await store.rooms.placements(at(25), limit=10)] == ["r1"]
    assert len(await store.rooms.placements(at(0), limit=1)) == 1


async def test_rooms_are_read_a_batch_at_a_time(store: Store) -> None:
    await store.rooms.open([room("r1"), room("r2")])
    got = await store.rooms.get_many(["r2", "missing", "r1", "r2"])
    assert sorted(r.id for r in got) == ["r1", "r2"]
    assert await store.rooms.get_many([]) == []


async def test_a_proxy_reads_back_only_the_placements_other_proxies_recorded(store: Store) -> None:
    mine = Served("k1" * 16, "127.0.0.1:11435", at(10), by="me")
    theirs = Served("k2" * 16, "127.0.0.1:11436", at(20), by="them")
    unsigned = Served("k3" * 16, "127.0.0.1:11437", at(30))  # recorded before "by" existed
    await store.rooms.open([room("r1", served=mine), room("r2", served=theirs)])
    await store.rooms.open([room("r3", served=unsigned)])
    assert await store.rooms.placements(at(0), limit=10, other_than="me") == [
        ("r2", theirs),
        ("r3", unsigned),
    ]
    assert [r for r, _ in await store.rooms.placements(at(0), limit=10)] == ["r1", "r2", "r3"]


async def test_rooms_are_listed_newest_first_a_page_at_a_time(store: Store) -> None:
    await store.rooms.open(
        [
            room("a", updated=1),
            room("b", updated=3),
            room("c", updated=3),  # same moment: the id breaks the tie
            room("d", updated=2),
            room("x", user="u2", updated=9),
        ]
    )
    page = await store.rooms.list("u1", limit=2)
    assert [r.id for r in page] == ["c", "b"]
    last = page[-1]
    assert last.updated_at is not None
    rest = await store.rooms.list("u1", limit=5, before=(last.updated_at, last.id))
    assert [r.id for r in rest] == ["d", "a"]
    assert [r.id for r in await store.rooms.list("u3", limit=5)] == []


async def test_messages_are_listed_oldest_first_and_by_kind(store: Store) -> None:
    await store.messages.add(
        [
            message("m3", started=3, seq=2),
            message("m1", started=1, seq=1),
            message("t1", started=2, kind="task", task="title", seq=None),
            message("o1", room_id="r2", started=0),
        ]
    )
    assert [m.id for m in await store.messages.list("r1", limit=10)] == ["m1", "m3"]
    every = await store.messages.list("r1", limit=10, kinds=("turn", "task"))
    assert [m.id for m in every] == ["m1", "t1", "m3"]
    after = await store.messages.list("r1", limit=10, after=every[0].mark)
    assert [m.id for m in after] == ["m3"]


async def test_turns_that_started_in_the_same_millisecond_are_listed_in_the_rooms_order(
    store: Store,
) -> None:
    # A script's turns can start within one millisecond (MongoDB keeps no finer time);
    # their random ids must not decide which comes first, on one page or across pages.
    await store.messages.add(
        [
            message("f", started=5, seq=1),
            message("c", started=5, seq=3),
            message("e", started=5, seq=2),
            message("a", started=5, seq=4),
            message("b", started=5, kind="task", task="title", seq=None),
            message("d", started=6, seq=5),
        ]
    )
    listed = await store.messages.list("r1", limit=10)
    assert [m.id for m in listed] == ["f", "e", "c", "a", "d"]
    every = await store.messages.list("r1", limit=10, kinds=("turn", "task"))
    assert [m.id for m in every] == ["b", "f", "e", "c", "a", "d"]  # the task has no seq
    paged, after = [], None
    while page := await store.messages.list("r1", limit=1, after=after, kinds=("turn", "task")):
        paged.append(page[0].id)
        after = page[0].mark
    assert paged == ["b", "f", "e", "c", "a", "d"]


async def test_a_head_is_found_by_the_best_listed_hash_of_the_same_user(store: Store) -> None:
    await store.messages.add(
        [
            message("m1", full_hash="h1", room_id="r1"),
            message("m2", full_hash="h2", room_id="r2", started=1),
            message("m3", full_hash="h3", room_id=None, started=2),  # no room: no head
            message("m4", full_hash="h4", room_id="r4", user_id="u2"),
        ]
    )
    found = await store.messages.find_head("u1", ["h9", "h2", "h1"])
    assert found is not None and found.id == "m2"
    assert await store.messages.find_head("u1", ["h3"]) is None
    assert await store.messages.find_head("u1", ["h4"]) is None
    assert await store.messages.find_head("u1", []) is None


async def test_rename_and_delete(store: Store) -> None:
    await store.rooms.open([room("r1")])
    await store.messages.add([message("m1"), message("m2", started=1), message("x", room_id="r2")])
    renamed = await store.rooms.rename("r1", "여행 계획")
    assert renamed is not None and renamed.title == "여행 계획"
    assert await store.rooms.rename("nope", "t") is None
    assert await store.messages.delete_room("r1") == 2
    assert await store.rooms.delete("r1")
    assert not await store.rooms.delete("r1")
    assert [m.id for m in await store.messages.get_many(["m1", "m2", "x"])] == ["x"]


async def test_the_seed_apps_own_documents_do_not_get_in_the_way(mongo_uri: str) -> None:
    store = open_store(Settings(store=store_settings(mongo_uri)))
    assert isinstance(store, MongoStore)
    db = store.client[database_of(mongo_uri)]
    # The Next.js app's shapes: ObjectIds and camelCase fields.
    await db["rooms"].insert_one({"_id": ObjectId(), "userId": "u1", "name": "옛 방"})
    await db["messages"].insert_one({"_id": ObjectId(), "roomId": "r1", "content": "옛 글"})
    await store.start()
    await store.rooms.open([room("r1")])
    await store.messages.add([message("m1")])
    assert [r.id for r in await store.rooms.list("u1", limit=10)] == ["r1"]
    assert [m.id for m in await store.messages.list("r1", limit=10)] == ["m1"]
    await store.close()


async def test_an_earlier_versions_message_index_gives_way_to_the_ordered_one(
    mongo_uri: str,
) -> None:
    store = open_store(Settings(store=store_settings(mongo_uri)))
    assert isinstance(store, MongoStore)
    messages = store.client[database_of(mongo_uri)]["messages"]
    await messages.create_index(
        [("room_id", 1), ("started_at", 1), ("_id", 1)], name="room_started"
    )
    await store.start()
    names = [index["name"] async for index in await messages.list_indexes()]
    assert "room_order" in names and "room_started" not in names
    await store.close()
    again = open_store(Settings(store=store_settings(mongo_uri)))
    await again.start()  # and a start without it goes on as usual
    await again.close()


async def test_an_integer_mongodb_cannot_hold_is_a_refusal_not_a_crash(mongo_uri: str) -> None:
    # BSON integers are at most 8 bytes; pymongo raises OverflowError, not one of its own.
    store = open_store(Settings(store=store_settings(mongo_uri)))
    await store.start()
    try:
        with pytest.raises(ProxyError, match="MongoDB cannot store this document"):
            await store.messages.add([message("m1", counters={"eval_count": 1 << 70})])
        assert await store.messages.get_many(["m1"]) == []
    finally:
        await store.close()
