"""Admission control, pure: slots per backend, a fair bounded queue, round-robin order."""

from __future__ import annotations

import asyncio

import pytest

from olbproxy.errors import Unavailable
from olbproxy.pool import Backend, Pool, SlotPlacement
from olbproxy.settings import GroupSettings, Settings

M = "gpt-oss:20b"


def make_pool(
    backends: int = 2, slots: int = 1, queue_size: int = 8, queue_timeout: float = 30
) -> Pool:
    group = GroupSettings(
        name="g",
        models=(M,),
        endpoints=tuple(f"http://127.0.0.1:{10000 + i}" for i in range(backends)),
        slots=slots,
        queue_size=queue_size,
        queue_timeout=queue_timeout,
    )
    return Pool(Settings(groups=(group,)))


def placement(pool: Pool, user: str = "u", interactive: bool = True) -> SlotPlacement:
    return SlotPlacement(pool, pool.groups["g"], M, user, interactive)


async def test_round_robin_among_backends_with_a_free_slot() -> None:
    pool = make_pool(backends=3, slots=2)
    got = [(await placement(pool).acquire([])).label for _ in range(6)]
    assert got == ["127.0.0.1:10000", "127.0.0.1:10001", "127.0.0.1:10002"] * 2


async def test_a_full_backend_is_skipped_and_order_kept() -> None:
    pool = make_pool(backends=3, slots=1)
    first = await placement(pool).acquire([])  # 10000 now full
    second = await placement(pool).acquire([])
    placement(pool).release(first)
    third = await placement(pool).acquire([])
    fourth = await placement(pool).acquire([])
    assert [b.label[-5:] for b in (first, second, third, fourth)] == [
        "10000",
        "10001",
        "10002",
        "10000",
    ]


async def test_slots_are_never_exceeded_and_waiters_get_freed_slots() -> None:
    pool = make_pool(backends=2, slots=1)
    held = [await placement(pool).acquire([]) for _ in range(2)]
    waiter = asyncio.create_task(placement(pool).acquire([]))
    await asyncio.sleep(0)
    assert not waiter.done() and pool.groups["g"].admission.waiting == 1
    assert all(b.in_flight == 1 for b in pool.all_backends())
    placement(pool).release(held[1])
    backend = await waiter
    assert backend is held[1] and backend.in_flight == 1


async def test_full_queue_answers_503_with_retry_after() -> None:
    pool = make_pool(backends=1, slots=1, queue_size=1)
    await placement(pool).acquire([])
    queued = asyncio.create_task(placement(pool).acquire([]))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="at capacity") as info:
        await placement(pool).acquire([])
    assert info.value.status == 503 and info.value.headers()["Retry-After"] == "5"
    queued.cancel()


async def test_queue_wait_times_out_with_503() -> None:
    pool = make_pool(backends=1, slots=1, queue_timeout=0.05)
    await placement(pool).acquire([])
    with pytest.raises(Unavailable, match="no free slot"):
        await placement(pool).acquire([])
    assert pool.groups["g"].admission.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    pool = make_pool(backends=1, slots=1)
    held = await placement(pool).acquire([])
    waiter = asyncio.create_task(placement(pool).acquire([]))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.groups["g"].admission.waiting == 0
    placement(pool).release(held)
    assert held.in_flight == 0  # the slot was not handed to the departed waiter


async def test_users_take_turns_so_one_burst_cannot_starve_another() -> None:
    pool = make_pool(backends=1, slots=1, queue_size=32)
    held = await placement(pool).acquire([])
    order: list[str] = []

    async def ask(user: str) -> None:
        backend = await placement(pool, user).acquire([])
        order.append(user)
        placement(pool).release(backend)

    tasks = [asyncio.create_task(ask("alice")) for _ in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(ask("bob")))
    await asyncio.sleep(0)
    placement(pool).release(held)
    await asyncio.gather(*tasks)
    # Bob arrived after all five of Alice's, but is served second, not sixth.
    assert order[:2] == ["alice", "bob"]


async def test_interactive_requests_go_ahead_of_background_ones_of_the_same_user() -> None:
    pool = make_pool(backends=1, slots=1)
    held = await placement(pool).acquire([])
    order: list[str] = []

    async def ask(kind: str, interactive: bool) -> None:
        backend = await placement(pool, "u", interactive).acquire([])
        order.append(kind)
        placement(pool).release(backend)

    tasks = [asyncio.create_task(ask("title", False)), asyncio.create_task(ask("tags", False))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(ask("chat", True)))
    await asyncio.sleep(0)
    placement(pool).release(held)
    await asyncio.gather(*tasks)
    assert order == ["chat", "title", "tags"]


async def test_no_healthy_backend_answers_503_at_once() -> None:
    pool = make_pool(backends=2)
    for backend in pool.all_backends():
        backend.mark_failed("refused", threshold=1)
    with pytest.raises(Unavailable, match="no healthy backend"):
        await placement(pool).acquire([])


async def test_waiters_fail_when_every_backend_goes_down() -> None:
    pool = make_pool(backends=1, slots=1)
    await placement(pool).acquire([])
    waiter = asyncio.create_task(placement(pool).acquire([]))
    await asyncio.sleep(0)
    (backend,) = pool.all_backends()
    backend.mark_failed("refused", threshold=1)
    pool.slot_freed(backend)
    with pytest.raises(Unavailable):
        await waiter


async def test_excluded_backends_are_not_offered_again() -> None:
    pool = make_pool(backends=2, slots=1)
    first = await placement(pool).acquire([])
    placement(pool).release(first)
    other = await placement(pool).acquire([first])
    assert other is not first


async def test_reload_keeps_live_backends_and_their_counts() -> None:
    pool = make_pool(backends=2, slots=1)
    held = await placement(pool).acquire([])
    group = GroupSettings(
        name="g", models=(M,), endpoints=(held.url, "http://127.0.0.1:10009"), slots=1
    )
    pool.apply(Settings(groups=(group,)))
    kept = pool.backends[held.url]
    assert kept is held and kept.in_flight == 1
    assert isinstance(pool.backends["http://127.0.0.1:10009"], Backend)
