"""Filing records into rooms: named rooms, continuations, tasks, replays (memory store)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import pytest

from olbproxy.persistence.filing import Filing
from olbproxy.persistence.record import Record
from olbproxy.store import Store
from olbproxy.store.memory import MemoryStore

_ids = itertools.count(1)


def record(user: str = "u1", **kw: Any) -> Record:
    n = next(_ids)
    values: dict[str, Any] = {
        "id": f"{n:032x}",
        "kind": "turn",
        "endpoint": "/api/chat",
        "user_id": user,
        "user_name": user,
        "status": "done",
        "started_at": 1_700_000_000_000 + n * 1000,
        "ended_at": 1_700_000_000_500 + n * 1000,
        "input": f"question {n}",
        "title": f"question {n}",
        "opens_room": True,
        "full_hash": f"full-{n}",
        **kw,
    }
    return Record(**values)


async def write(filing: Filing, *records: Record, replay: bool = False) -> None:
    """What the recorder's writer does with a batch."""
    plan = await filing.plan(records, replay=replay)
    store = filing.store
    await store.rooms.open(plan.rooms)
    await store.messages.add(plan.messages)
    await store.rooms.advance(list(plan.steps.values()))
    filing.commit(plan)


async def placed(store: Store, record_id: str) -> tuple[str | None, int | None]:
    (message,) = await store.messages.get_many([record_id])
    return message.room_id, message.seq


@pytest.fixture
def filing() -> Filing:
    return Filing(MemoryStore())


async def test_turns_chain_into_one_room_and_a_new_history_opens_another(
    filing: Filing,
) -> None:
    first = record()
    second = record(continues=[first.full_hash])
    third = record(continues=[second.full_hash, first.full_hash])
    other = record()
    await write(filing, first, second)  # one batch
    await write(filing, third, other)
    store = filing.store
    assert [await placed(store, r.id) for r in (first, second, third)] == [
        (first.id, 1),
        (first.id, 2),
        (first.id, 3),
    ]
    assert await placed(store, other.id) == (other.id, 1)
    room = await store.rooms.get(first.id)
    assert room is not None and (room.turns, room.title) == (3, first.title)


async def test_after_a_restart_the_database_finds_the_turn_continued(filing: Filing) -> None:
    first = record()
    await write(filing, first)
    fresh = Filing(filing.store)  # empty caches, as after a restart
    second = record(continues=["unknown", first.full_hash])
    await write(fresh, second)
    assert await placed(filing.store, second.id) == (first.id, 2)


async def test_a_named_room_is_opened_for_its_caller_and_kept_for_them(filing: Filing) -> None:
    first = record(named_room="chat-1")
    second = record(named_room="chat-1", continues=["nothing"])
    await write(filing, first)
    await write(filing, second)
    assert [await placed(filing.store, r.id) for r in (first, second)] == [
        ("chat-1", 1),
        ("chat-1", 2),
    ]
    assert filing.owner("chat-1") == "u1"


async def test_someone_elses_room_gets_a_room_of_the_callers_own(
    filing: Filing, caplog: pytest.LogCaptureFixture
) -> None:
    await write(filing, record(named_room="shared"))
    intruder = record(user="u2", named_room="shared")
    with caplog.at_level(logging.WARNING, logger="olbproxy.persistence.filing"):
        await write(filing, intruder)
    assert await placed(filing.store, intruder.id) == (intruder.id, 1)
    assert "of another user" in caplog.text
    room = await filing.store.rooms.get("shared")
    assert room is not None and (room.user_id, room.turns) == ("u1", 1)


async def test_a_history_of_another_user_is_not_continued(filing: Filing) -> None:
    first = record()
    await write(filing, first)
    theirs = record(user="u2", continues=[first.full_hash])
    await write(filing, theirs)
    assert await placed(filing.store, theirs.id) == (theirs.id, 1)


async def test_tasks_link_to_their_room_but_never_open_one_or_count(filing: Filing) -> None:
    turn = record(named_room="chat-9")
    await write(filing, turn)
    title = record(kind="task", task="title", named_room="chat-9", opens_room=False)
    stray = record(kind="task", task="tags", opens_room=False)
    await write(filing, title, stray)
    assert await placed(filing.store, title.id) == ("chat-9", None)
    assert await placed(filing.store, stray.id) == (None, None)
    room = await filing.store.rooms.get("chat-9")
    assert room is not None and room.turns == 1


async def test_a_failed_first_turn_opens_no_room(filing: Filing) -> None:
    failed = record(status="error", opens_room=False, full_hash=None)
    await write(filing, failed)
    assert await placed(filing.store, failed.id) == (None, None)
    assert await filing.store.rooms.list("u1", limit=5) == []


async def test_a_deleted_room_is_not_resurrected_by_its_heads(filing: Filing) -> None:
    first = record()
    await write(filing, first)
    await filing.store.messages.delete_room(first.id)
    await filing.store.rooms.delete(first.id)
    filing.forget(first.id)
    again = record(continues=[first.full_hash])
    await write(filing, again)
    assert await placed(filing.store, again.id) == (again.id, 1)


async def test_a_replay_of_written_records_changes_nothing(filing: Filing) -> None:
    first = record()
    second = record(continues=[first.full_hash])
    await write(filing, first, second)
    fresh = Filing(filing.store)
    third = record(continues=[second.full_hash])
    # The spool still held all three (say, a crash before its cursor moved).
    await write(fresh, first, second, third, replay=True)
    assert [await placed(filing.store, r.id) for r in (first, second, third)] == [
        (first.id, 1),
        (first.id, 2),
        (first.id, 3),
    ]
    room = await filing.store.rooms.get(first.id)
    assert room is not None and room.turns == 3


async def test_a_replay_repairs_progress_lost_between_two_writes(filing: Filing) -> None:
    first = record()
    plan = await filing.plan([first], replay=False)
    # The room and the message were written; the crash came before the room's progress.
    await filing.store.rooms.open(plan.rooms)
    await filing.store.messages.add(plan.messages)
    fresh = Filing(filing.store)
    await write(fresh, first, replay=True)
    room = await filing.store.rooms.get(first.id)
    assert room is not None and room.turns == 1
    second = record(continues=[first.full_hash])
    await write(fresh, dataclasses.replace(second))
    assert await placed(filing.store, second.id) == (first.id, 2)


async def test_a_new_room_never_lands_in_another_users_room_whatever_ids_collide(
    filing: Filing,
) -> None:
    victim = record("u1")
    # Another user names, ahead of time, the room id the victim's first turn will open.
    squat = record("u2", named_room=victim.id)
    await write(filing, squat)
    await write(filing, victim)
    room, seq = await placed(filing.store, victim.id)
    assert room is not None and room != victim.id and seq == 1
    opened = await filing.store.rooms.get(room)
    assert opened is not None and opened.user_id == "u1"
    squatted = await filing.store.rooms.get(victim.id)
    assert squatted is not None and squatted.user_id == "u2" and squatted.turns == 1


async def test_a_room_id_taken_between_planning_and_writing_is_noticed(filing: Filing) -> None:
    mine = record("u1")
    plan = await filing.plan([mine], replay=False)
    # Another proxy sharing the database opens a room under that id for someone else.
    intruder = dataclasses.replace(plan.rooms[0], user_id="u2")
    assert await filing.store.rooms.open([intruder]) == set()
    taken = await filing.store.rooms.open(plan.rooms)
    assert await filing.clashes(plan, taken)
    again = await filing.plan([mine], replay=False)
    assert again.rooms[0].id != mine.id and again.rooms[0].user_id == "u1"
    assert again.messages[0].room_id == again.rooms[0].id


async def test_a_batch_of_new_conversations_asks_the_database_about_their_rooms_once(
    filing: Filing, monkeypatch: pytest.MonkeyPatch
) -> None:
    rooms = filing.store.rooms
    reads: list[str] = []
    get, get_many = rooms.get, rooms.get_many

    async def one(room_id: str) -> Any:
        reads.append("get")
        return await get(room_id)

    async def many(room_ids: Any) -> Any:
        reads.append(f"get_many {len(room_ids)}")
        return await get_many(room_ids)

    monkeypatch.setattr(rooms, "get", one)
    monkeypatch.setattr(rooms, "get_many", many)
    firsts = [record(user=f"u{n}") for n in range(32)]
    await write(filing, *firsts)
    assert reads == ["get_many 32"]
    assert [await placed(filing.store, r.id) for r in firsts] == [(r.id, 1) for r in firsts]
    # The next turns know their rooms from the first batch: no read at all.
    reads.clear()
    await write(filing, *[record(user=r.user_id, continues=[r.full_hash]) for r in firsts])
    assert reads == []
