"""PrefixIndex: which instances have served which prompt prefixes (placement.py reads it).

A prompt is cut at message boundaries (prompt.py), each boundary hashed with all that
comes before it; the index maps each hash to the instances that served a prompt with
that prefix, and the cache state each was in then (``Stamp``), so that placement can
tell whether the instance may still hold it. Least recently used hashes go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from olbproxy.prompt import Prompt

INDEX_SIZE = 200_000  # boundary hashes remembered, least recently used out


@dataclass(slots=True)
class Stamp:
    """One instance holding one boundary: the cache state it was recorded in."""

    epoch: int | None  # Backend.epochs[model] then; None: unknown (another proxy's record)
    stored: int | None  # prompt tokens the instance had processed then
    whole: bool  # the boundary was a whole prompt served there (an exchange key)


class PrefixIndex:
    """Boundary hash -> the instances that have served a prompt with that prefix."""

    def __init__(self, size: int = INDEX_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, dict[str, Stamp]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _put(self, key: bytes, backend: str, stamp: Stamp) -> None:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = {}
        else:
            self._entries.move_to_end(key)
            stamp.whole = stamp.whole or (backend in entry and entry[backend].whole)
        entry[backend] = stamp
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def record(self, prompt: Prompt, backend: str, epoch: int, stored: int) -> None:
        for key in prompt.hashes:
            self._put(key, backend, Stamp(epoch, stored, key == prompt.key))

    def remember(self, key: bytes, backend: str) -> None:
        """A whole prompt another proxy saw served there (no cache state known)."""
        if backend not in self._entries.get(key, {}):
            self._put(key, backend, Stamp(None, None, True))

    def holders(
        self, prompt: Prompt, valid: Callable[[str, Stamp], bool], shallowest: int = 0
    ) -> dict[str, int]:
        """Each instance's deepest valid boundary of ``prompt`` (index into its hashes),
        if it is at least ``shallowest``."""
        found: dict[str, int] = {}
        for depth in range(len(prompt.hashes) - 1, shallowest - 1, -1):
            entry = self._entries.get(prompt.hashes[depth])
            if not entry:
                continue
            for backend, stamp in entry.items():
                if backend not in found and valid(backend, stamp):
                    found[backend] = depth
        return found

    def served(self, key: bytes) -> dict[str, Stamp]:
        return {b: s for b, s in self._entries.get(key, {}).items() if s.whole}
