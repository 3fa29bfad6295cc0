"""The placement feed: where other proxies placed rooms' turns, read back into the planner
(persistence/placements.py), against both stores."""

from __future__ import annotations

from datetime import datetime, timedelta

from olbproxy.persistence.placements import PlacementFeed
from olbproxy.placement import Planner
from olbproxy.pool import Pool
from olbproxy.settings import GroupSettings, PlacementSettings, Settings
from olbproxy.store import Room, Served, Store, now

BACKEND = "127.0.0.1:11436"
LATE = 60.0


def feed_of(store: Store) -> PlacementFeed:
    group = GroupSettings(name="20b", models=("gpt-oss:20b",), endpoints=(f"http://{BACKEND}",))
    pool = Pool(Settings(groups=(group,)))
    planner = Planner(pool, PlacementSettings())
    return PlacementFeed(store.rooms, planner, PlacementSettings(), instance="me", late=LATE)


def served_room(room_id: str, at: datetime, by: str) -> Room:
    key = f"{len(room_id):02x}" * 16
    return Room(
        id=room_id,
        user_id="u1",
        created_at=at,
        updated_at=at,
        served=Served(key, BACKEND, at, by=by),
    )


async def test_a_proxy_recording_alone_moves_its_feed_on(store: Store) -> None:
    """Its own placements are never read back, and a refresh no longer starts at the
    horizon: the database would walk every room of the last six hours each time."""
    feed = feed_of(store)
    start = now()
    await store.rooms.open(
        [served_room(f"own{i}", start - timedelta(hours=1, seconds=i), "me") for i in range(3)]
    )
    assert await feed.load() == 0
    assert feed.since >= start - timedelta(seconds=LATE)  # not the horizon, 6 h back
    assert feed.since <= now() - timedelta(seconds=LATE)


async def test_another_proxys_late_record_is_still_read(store: Store) -> None:
    """A record reaches MongoDB up to ``late`` seconds after its turn (store.defer): the
    next refresh still reads it."""
    feed = feed_of(store)
    assert await feed.load() == 0
    late = served_room("theirs", now() - timedelta(seconds=LATE / 2), "them")
    await store.rooms.open([late])
    assert await feed.load() == 1
    assert feed.planner.index.served(bytes.fromhex(late.served.key if late.served else ""))
    assert await feed.load() == 1  # the same moment is read again, harmlessly
