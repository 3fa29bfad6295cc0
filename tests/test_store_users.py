"""The store's users and API keys: the memory and MongoDB stores keep the same contract."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from identity import store_settings
from mongo import MongoServer
from pymongo.errors import ServerSelectionTimeoutError

from olbproxy.errors import Conflict, Unavailable
from olbproxy.settings import Settings
from olbproxy.store import ApiKey, Store, User, UserChanges, new_id
from olbproxy.store.backends import open_store
from olbproxy.store.mongo import Outage


def moment() -> datetime:
    # MongoDB keeps milliseconds: compare at that precision.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def user(name: str, **kw: Any) -> User:
    return User(
        id=new_id(),
        username=name,
        username_key=name.lower(),
        password_hash="sha256+$2b$04$x",
        created_at=moment(),
        **kw,
    )


async def test_users_round_trip(store: Store) -> None:
    kim = user("Kim", groups=frozenset({"20b"}))
    await store.users.add(kim)
    assert await store.users.get(kim.id) == kim
    assert await store.users.find("kim") == kim
    assert await store.users.find("lee") is None
    assert await store.users.get(new_id()) is None


async def test_a_taken_username_is_a_conflict(store: Store) -> None:
    await store.users.add(user("Kim"))
    with pytest.raises(Conflict, match="username 'KIM' is taken"):
        await store.users.add(user("KIM"))
    assert [u.username for u in await store.users.list()] == ["Kim"]


async def test_updates_apply_and_unknown_ids_say_so(store: Store) -> None:
    kim = user("Kim")
    await store.users.add(kim)
    seen = moment()
    changes: UserChanges = {"disabled": True, "groups": frozenset({"120b"}), "role": "admin"}
    assert await store.users.update(kim.id, {**changes, "last_login_at": seen})
    got = await store.users.get(kim.id)
    assert got is not None
    assert (got.disabled, got.groups, got.role, got.last_login_at) == (
        True,
        frozenset({"120b"}),
        "admin",
        seen,
    )
    assert await store.users.update(kim.id, {"groups": None})
    got = await store.users.get(kim.id)
    assert got is not None and got.groups is None
    assert not await store.users.update(new_id(), {"disabled": True})


async def test_get_many_and_list(store: Store) -> None:
    names = ["Lee", "Kim", "Park"]
    users = [user(n) for n in names]
    for u in users:
        await store.users.add(u)
    got = await store.users.get_many([users[0].id, users[2].id, new_id()])
    assert sorted(u.username for u in got) == ["Lee", "Park"]
    assert await store.users.get_many([]) == []
    assert [u.username for u in await store.users.list()] == ["Kim", "Lee", "Park"]


async def test_keys_add_list_and_revoke_once(store: Store) -> None:
    kim, lee = user("Kim"), user("Lee")
    keys = [
        ApiKey(
            id="a1b2c3d4e5f6",
            user_id=kim.id,
            secret_hash="h1",
            label="owui",
            front_end=True,
            groups=frozenset({"20b"}),
            created_at=moment(),
        ),
        ApiKey(id="0123456789ab", user_id=lee.id, secret_hash="h2", created_at=moment()),
    ]
    for key in keys:
        await store.keys.add(key)
    with pytest.raises(Conflict):
        await store.keys.add(keys[0])
    assert await store.keys.get("a1b2c3d4e5f6") == keys[0]
    assert await store.keys.list(kim.id) == [keys[0]]
    assert {k.id for k in await store.keys.list()} == {k.id for k in keys}
    assert [k.id for k in await store.keys.get_many(["0123456789ab", "ffffffffffff"])] == [
        "0123456789ab"
    ]
    at = moment()
    assert await store.keys.revoke("a1b2c3d4e5f6", at)
    assert not await store.keys.revoke("a1b2c3d4e5f6", at)  # once
    assert not await store.keys.revoke("ffffffffffff", at)
    revoked = await store.keys.get("a1b2c3d4e5f6")
    assert revoked is not None
    assert revoked.revoked_at == at


async def test_an_unreachable_mongodb_is_a_quick_503(own_mongo: MongoServer) -> None:
    store = open_store(
        Settings(store=store_settings(own_mongo.uri.replace("/?", "/outage?"), timeout=0.5))
    )
    await store.start()
    await store.users.add(user("Kim"))
    await own_mongo.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        await store.users.find("kim")
    assert time.monotonic() - started < 5
    assert raised.value.status == 503
    assert "MongoDB" in raised.value.message
    await own_mongo.start()
    # pymongo leaks a socket if it is closed while reconnecting to a dead server.
    assert await store.users.find("kim") is not None
    await store.close()


# What pymongo says when MongoDB is down: the reason, then its whole topology.
PYMONGO_MESSAGE = (
    "127.0.0.1:1: [Errno 111] Connect call failed ('127.0.0.1', 1) (configured timeouts: "
    "socketTimeoutMS: 3000.0ms, connectTimeoutMS: 3000.0ms), Timeout: 3.0s, Topology "
    "Description: <TopologyDescription id: 6b13cecc9efaa9243e58fc31, topology_type: Unknown, "
    "servers: [<ServerDescription ('127.0.0.1', 1) server_type: Unknown, rtt: None, "
    "error=AutoReconnect(\"127.0.0.1:1: [Errno 111] Connect call failed ('127.0.0.1', 1) "
    '(configured timeouts: socketTimeoutMS: 3000.0ms, connectTimeoutMS: 3000.0ms)")>]>'
)


def test_an_outage_is_one_short_log_line_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not pymongo's topology description on every failed request (issue 15)."""
    clock = [1000.0]
    outage = Outage(every=60, clock=lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="olbproxy.store")
    for seconds in (0, 1, 2, 61):
        clock[0] = 1000.0 + seconds
        with pytest.raises(Unavailable), outage():
            raise ServerSelectionTimeoutError(PYMONGO_MESSAGE)
    lines = [r.getMessage() for r in caplog.records if r.name == "olbproxy.store"]
    assert lines == [
        "MongoDB is unreachable: 127.0.0.1:1: [Errno 111] Connect call failed ('127.0.0.1', 1)",
        "MongoDB is unreachable: 127.0.0.1:1: [Errno 111] Connect call failed ('127.0.0.1', 1) "
        "(2 more failures since the last report)",
    ]
