"""The audit trail's store noun, in memory and in MongoDB (SecantusDB): the same contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from olbproxy.store import AuditEntry, Store, new_id

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def entry(minutes: int, action: str, target: str, *users: str) -> AuditEntry:
    return AuditEntry(
        id=new_id(),
        at=START + timedelta(minutes=minutes),
        actor="root",
        via="cli",
        address="mac-studio",
        action=action,
        target=target,
        users=("root", *users),
        detail={"groups": "20b"} if action == "user.add" else {},
    )


async def test_entries_come_back_newest_first_filtered_by_time_and_user(store: Store) -> None:
    added = [
        entry(0, "user.add", "kim", "kim"),
        entry(1, "user.add", "lee", "lee"),
        entry(2, "key.revoke", "a1b2c3d4e5f6", "kim"),
        entry(3, "model.pull", "gpt-oss:20b"),
    ]
    for item in added:
        await store.audit.add(item)
    assert [e.id for e in await store.audit.list()] == [e.id for e in reversed(added)]
    assert await store.audit.list(limit=1) == [added[3]]
    assert [e.id for e in await store.audit.list(user="kim")] == [added[2].id, added[0].id]
    later = await store.audit.list(since=START + timedelta(minutes=2))
    assert [e.action for e in later] == ["model.pull", "key.revoke"]
    (first,) = await store.audit.list(user="lee")
    assert first == added[1]
