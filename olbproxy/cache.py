"""Bounded: the one map the proxy keeps that must not grow without bound.

Every memory that a stream of distinct keys could fill (verified tokens, unknown ids,
model names routed, room owners and history heads, blob homes, login attempts) is a
``Bounded``: least recently used entries go first once ``size`` is reached. Entries that
also expire carry their own deadline in the value; the map only bounds the count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond ``size``."""

    __slots__ = ("_data", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def __repr__(self) -> str:
        return f"<Bounded {len(self._data)}/{self.size}>"
