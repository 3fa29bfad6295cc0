"""A loaded model in the cost model: its runner options, slots and host-RAM prompt cache.

Which slot a prompt takes and how much of it is cached there (or restored from host RAM)
is decided here; costs.py's Instance loads runners, waits for slots and pays the time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from olbproxy.simulator.prompt import common_prefix, tokens

RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")


def runner_options(body: Mapping[str, Any], default_ctx: int) -> tuple[tuple[str, Any], ...]:
    """The options that decide a runner; a request asking for others reloads it."""
    options = body.get("options")
    given = options if isinstance(options, dict) else {}
    values = {k: given[k] for k in RUNNER_OPTIONS if given.get(k) is not None}
    values.setdefault("num_ctx", default_ctx)
    return tuple(sorted(values.items()))


@dataclass
class Slot:
    content: bytes = b""
    used_at: float = 0.0
    busy: bool = False


@dataclass
class Runner:
    """One loaded model: its options, slots and host-RAM prompt cache."""

    options: tuple[tuple[str, Any], ...]
    slots: list[Slot]
    kv_bytes: int
    ram_limit: int
    ram: list[bytes] = field(default_factory=list)  # least recently used first
    users: int = 0  # requests assigned to it (waiting for a slot or running)
    free: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def num_ctx(self) -> int:
        return int(dict(self.options).get("num_ctx") or 0)

    @property
    def ram_tokens(self) -> int:
        return sum(tokens(len(c)) for c in self.ram)

    def has_free_slot(self) -> bool:
        return any(not s.busy for s in self.slots)

    def save(self, content: bytes) -> None:
        """Keep an evicted prompt in host RAM; prefixes of it are redundant now."""
        if not content:
            return
        self.ram = [c for c in self.ram if not content.startswith(c)]
        self.ram.append(content)
        while len(self.ram) > 1 and self.ram_tokens * self.kv_bytes > self.ram_limit:
            self.ram.pop(0)

    def take(self, prompt: bytes) -> tuple[Slot, int]:
        """A free slot for ``prompt`` and how many of its bytes are cached there."""
        free = [s for s in self.slots if not s.busy]
        shared = [(common_prefix(s.content, prompt), s) for s in free]
        best, slot = max(shared, key=lambda pair: (pair[0], -pair[1].used_at))
        if best == 0:
            slot = min(free, key=lambda s: s.used_at)
        slot.busy = True
        if best < len(slot.content):
            self.save(slot.content)  # about to be overwritten past the shared part
        from_ram = max(
            ((common_prefix(c, prompt), i) for i, c in enumerate(self.ram)), default=(0, -1)
        )
        if from_ram[0] > best:
            # Restored by copying: the cached prompt stays (most recently used), and
            # goes once a prompt extending it is saved in its place.
            entry = self.ram.pop(from_ram[1])
            self.ram.append(entry)
            slot.content = entry
            best = from_ram[0]
        return slot, best
