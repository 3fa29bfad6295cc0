"""Filing records into rooms: named rooms, continuations, tasks, replays (memory store)."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest

from olbproxy.record import Record
from olbproxy.store import Store
from olbproxy.store.memory import MemoryStore
from olbproxy.threads import Threads

_ids = itertools.count(1)


def record(user: str = "u1", **kw: object) -> Record:
    n = next(_ids)
    values: dict[str, object] = {
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
    return Record(**values)  # type: ignore[arg-type]


async def write(threads: Threads, *records: Record, replay: bool = False) -> None:
    """What the recorder's writer does with a batch."""
    plan = await threads.plan(records, replay=replay)
    store = threads.store
    await store.rooms.open(plan.rooms)
    await store.messages.add(plan.messages)
    await store.rooms.advance(list(plan.steps.values()))
    threads.commit(plan)


async def placed(store: Store, record_id: str) -> tuple[str | None, int | None]:
    (message,) = await store.messages.get_many([record_id])
    return message.room_id, message.seq


@pytest.fixture
def threads() -> Threads:
    return Threads(MemoryStore())


async def test_turns_chain_into_one_room_and_a_new_history_opens_another(
    threads: Threads,
) -> None:
    first = record()
    second = record(continues=[first.full_hash])
    third = record(continues=[second.full_hash, first.full_hash])
    other = record()
    await write(threads, first, second)  # one batch
    await write(threads, third, other)
    store = threads.store
    assert [await placed(store, r.id) for r in (first, second, third)] == [
        (first.id, 1),
        (first.id, 2),
        (first.id, 3),
    ]
    assert await placed(store, other.id) == (other.id, 1)
    room = await store.rooms.get(first.id)
    assert room is not None and (room.turns, room.title) == (3, first.title)


async def test_after_a_restart_the_database_finds_the_turn_continued(threads: Threads) -> None:
    first = record()
    await write(threads, first)
    fresh = Threads(threads.store)  # empty caches, as after a restart
    second = record(continues=["unknown", first.full_hash])
    await write(fresh, second)
    assert await placed(threads.store, second.id) == (first.id, 2)


async def test_a_named_room_is_opened_for_its_caller_and_kept_for_them(threads: Threads) -> None:
    first = record(named_room="chat-1")
    second = record(named_room="chat-1", continues=["nothing"])
    await write(threads, first)
    await write(threads, second)
    assert [await placed(threads.store, r.id) for r in (first, second)] == [
        ("chat-1", 1),
        ("chat-1", 2),
    ]
    assert threads.owner("chat-1") == "u1"


async def test_someone_elses_room_gets_a_room_of_the_callers_own(
    threads: Threads, caplog: pytest.LogCaptureFixture
) -> None:
    await write(threads, record(named_room="shared"))
    intruder = record(user="u2", named_room="shared")
    with caplog.at_level(logging.WARNING, logger="olbproxy.threads"):
        await write(threads, intruder)
    assert await placed(threads.store, intruder.id) == (intruder.id, 1)
    assert "of another user" in caplog.text
    room = await threads.store.rooms.get("shared")
    assert room is not None and (room.user_id, room.turns) == ("u1", 1)


async def test_a_history_of_another_user_is_not_continued(threads: Threads) -> None:
    first = record()
    await write(threads, first)
    theirs = record(user="u2", continues=[first.full_hash])
    await write(threads, theirs)
    assert await placed(threads.store, theirs.id) == (theirs.id, 1)


async def test_tasks_link_to_their_room_but_never_open_one_or_count(threads: Threads) -> None:
    turn = record(named_room="chat-9")
    await write(threads, turn)
    title = record(kind="task", task="title", named_room="chat-9", opens_room=False)
    stray = record(kind="task", task="tags", opens_room=False)
    await write(threads, title, stray)
    assert await placed(threads.store, title.id) == ("chat-9", None)
    assert await placed(threads.store, stray.id) == (None, None)
    room = await threads.store.rooms.get("chat-9")
    assert room is not None and room.turns == 1


async def test_a_failed_first_turn_opens_no_room(threads: Threads) -> None:
    failed = record(status="error", opens_room=False, full_hash=None)
    await write(threads, failed)
    assert await placed(threads.store, failed.id) == (None, None)
    assert await threads.store.rooms.list("u1", limit=5) == []


async def test_a_deleted_room_is_not_resurrected_by_its_heads(threads: Threads) -> None:
    first = record()
    await write(threads, first)
    await threads.store.messages.delete_room(first.id)
    await threads.store.rooms.delete(first.id)
    threads.forget(first.id)
    again = record(continues=[first.full_hash])
    await write(threads, again)
    assert await placed(threads.store, again.id) == (again.id, 1)


async def test_a_replay_of_written_records_changes_nothing(threads: Threads) -> None:
    first = record()
    second = record(continues=[first.full_hash])
    await write(threads, first, second)
    fresh = Threads(threads.store)
    third = record(continues=[second.full_hash])
    # The spool still held all three (say, a crash before its cursor moved).
    await write(fresh, first, second, third, replay=True)
    assert [await placed(threads.store, r.id) for r in (first, second, third)] == [
        (first.id, 1),
        (first.id, 2),
        (first.id, 3),
    ]
    room = await threads.store.rooms.get(first.id)
    assert room is not None and room.turns == 3


async def test_a_replay_repairs_progress_lost_between_two_writes(threads: Threads) -> None:
    first = record()
    plan = await threads.plan([first], replay=False)
    # The room and the message were written; the crash came before the room's progress.
    await threads.store.rooms.open(plan.rooms)
    await threads.store.messages.add(plan.messages)
    fresh = Threads(threads.store)
    await write(fresh, first, replay=True)
    room = await threads.store.rooms.get(first.id)
    assert room is not None and room.turns == 1
    second = record(continues=[first.full_hash])
    await write(fresh, dataclasses.replace(second))
    assert await placed(threads.store, second.id) == (first.id, 2)
