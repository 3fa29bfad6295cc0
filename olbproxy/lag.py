"""Lag: the proxy's own stalls, measured where they happen.

Every stream shares one event loop: whatever holds it (a garbage collection, a big
record being built, a slow log handler) delays every token of every user at once, and
no metric of Ollama's would show it. Two measurements, both cheap:

* ``LoopLag.run`` sleeps ``interval`` again and again and notes how late it woke up: the
  loop's lag, as a client of the loop sees it (a histogram, and the worst since start);
* ``GcPauses`` times each collection of CPython's garbage collector by generation
  (``gc.callbacks``): the stalls no request caused and every request paid for.

``settle_garbage`` is called once the proxy has started: everything allocated so far
(modules, routes, settings, caches) is moved out of the collector's sight with
``gc.freeze()``, so that later full collections walk only what requests create.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

Observe = Callable[[float], None]
ObserveGc = Callable[[int, float], None]

# Allocations (net of frees) between two generation-0 collections. Measured with
# `bench/run.py --quick --only ttft,gaps,whole --targets proxy`, one run per value, in
# the "whole" window (64 connections of small requests, the recorder's queue growing):
#   700 (CPython's default): 450 collections, 209 ms in all, ~0.5 ms each;
#   10,000: 6 collections, 28 ms in all, ~5 ms each;
#   50,000: 1 collection of 10.5 ms.
# In the streaming windows (ttft, gaps) each value collected at most once. 10,000 cuts
# the time spent collecting sevenfold and keeps any one pause to a few milliseconds; a
# larger value trades fewer pauses for longer ones, and the tail is what users feel.
GEN0_THRESHOLD = 10_000


class LoopLag:
    """How late the loop wakes a sleeper: its lag as any callback on it feels it."""

    def __init__(self, observe: Observe, *, interval: float = 0.05) -> None:
        self.observe = observe
        self.interval = interval
        self.worst = 0.0

    async def run(self) -> None:
        interval = self.interval
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            late = max(0.0, loop.time() - due)
            if late > self.worst:
                self.worst = late
            self.observe(late)


class GcPauses:
    """Times CPython's garbage collections (``gc.callbacks``), by generation."""

    def __init__(self, observe: ObserveGc) -> None:
        self.observe = observe
        self._started = 0.0
        self.installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.observe(int(info.get("generation", 0)), time.perf_counter() - self._started)

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self._callback)
            self.installed = True

    def remove(self) -> None:
        if self.installed:
            gc.callbacks.remove(self._callback)
            self.installed = False


def settle_garbage() -> None:
    """After start-up: collect once, then keep what exists out of later collections."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
