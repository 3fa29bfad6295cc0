"""Bounded: the least recently used entry goes first, and never more than ``size``."""

from __future__ import annotations

from olbproxy.cache import Bounded


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: Bounded[str, int] = Bounded(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def test_a_flood_of_keys_never_grows_it() -> None:
    cache: Bounded[int, int] = Bounded(100)
    for key in range(10_000):
        cache.put(key, key)
    assert len(cache) == 100 and list(cache) == list(range(9_900, 10_000))
    assert cache.pop(9_999) == 9_999 and cache.pop(9_999) is None
