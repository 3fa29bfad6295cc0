"""Batch: records written to the store together, as filing planned them.

A batch is three bulk operations: the rooms it opens (inserted with their progress
already in them), its messages, and the progress of the rooms that existed before.
``write`` serves the recorder's writer and its replay alike. ``write_replayed`` is the
replay's: when the database answers but refuses a batch, it writes the records one by
one and sets aside in the spool's ``rejected.jsonl`` those it refuses, so that one bad
record cannot hold the others back.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence

from olbproxy.errors import Unavailable
from olbproxy.persistence.filing import Filing, Plan
from olbproxy.persistence.record import Record
from olbproxy.persistence.spool import Spool
from olbproxy.store import Room, Store

# The recorder's logger: its operators follow the pipeline's messages under one name.
log = logging.getLogger("olbproxy.persistence.recorder")


async def write(store: Store, filing: Filing, records: Sequence[Record], *, replay: bool) -> None:
    plan = await filing.plan(records, replay=replay)
    rooms, taken = await _open_rooms(store, plan)
    if await filing.clashes(plan, taken):
        # Planned again, the room ids taken by someone else are known to be theirs.
        plan = await filing.plan(records, replay=replay)
        rooms, taken = await _open_rooms(store, plan)
    await store.messages.add(plan.messages)
    steps = plan.steps
    fresh = {room.id for room in rooms} - taken
    await store.rooms.advance([s for room_id, s in steps.items() if room_id not in fresh])
    filing.commit(plan)


async def _open_rooms(store: Store, plan: Plan) -> tuple[list[Room], set[str]]:
    # A room opened by this batch is inserted with its progress already in it, so
    # only rooms that existed before need a second write (most conversations in a
    # batch are new: one insert per room instead of an upsert and an update).
    steps = plan.steps
    rooms = [
        dataclasses.replace(room, turns=step.turns, updated_at=step.updated_at, served=step.served)
        if (step := steps.get(room.id)) is not None
        else room
        for room in plan.rooms
    ]
    return rooms, await store.rooms.open(rooms)


async def write_replayed(
    store: Store, filing: Filing, spool: Spool, stats: Counter[str], records: list[Record]
) -> None:
    try:
        await write(store, filing, records, replay=True)
        return
    except Unavailable:
        raise
    except Exception as exc:
        log.warning("persistence: MongoDB refused a replayed batch (%s); isolating", exc)
    # The database answers but refuses something: find what, set it aside, go on.
    for record in records:
        try:
            await write(store, filing, [record], replay=True)
        except Unavailable:
            raise
        except Exception as exc:
            log.error(
                "persistence: record %s refused (%s); set aside in the spool's rejected file",
                record.id,
                exc,
            )
            stats["rejected"] += 1
            await spool.reject([record.line()])
