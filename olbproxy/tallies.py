"""Tallies: per-exchange counters and histograms in plain dicts and lists, exposed to
Prometheus by a custom collector (metrics.py names them all).

prometheus_client's own counters and histograms take a lock per value and scan their
buckets one by one, which cost ~20 µs of the event loop per small request, 5 % of the
proxy's CPU under load. These cost a dict lookup and a bisection.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric


def le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``1.0``, ``0.05``, ``+Inf``): the
    same text for every bound here (its own helper is not a public API)."""
    return "+Inf" if bound == math.inf else repr(bound)


# No locks: every update (``observe``, ``observe_lag``) and every read runs on the one
# event loop thread. The /metrics handler of ``make_aiohttp_handler`` is a coroutine
# that builds the whole page synchronously (``_bake_output`` calls ``collect``), on the
# loop, for the main listener and ``metrics.listen`` alike; nothing can update a tally
# while a scrape reads it. (GC pauses are not tallied here: see ``Metrics``.)


class TallyCounter:
    """A counter per label set: a running total in a dict."""

    __slots__ = ("documentation", "labelnames", "name", "values")

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        # Exposed as <name>_total, the way prometheus_client names a Counter.
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class TallyHistogram:
    """A histogram per label set: one list holding the count of each bucket (not
    cumulative: an observation touches one slot, found by bisection) and the sum last."""

    __slots__ = ("bounds", "documentation", "labelnames", "les", "name", "series")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        # Upper bounds, inclusive as Prometheus's ``le``: bisect_left finds the first
        # bound >= the value, so a value on a bound is counted in that bound's bucket.
        self.bounds = (*(float(b) for b in buckets), math.inf)
        self.les = tuple(le(b) for b in self.bounds)  # as prometheus_client writes them
        self.series: dict[tuple[str, ...], list[float]] = {}
        if not labelnames:
            # An unlabelled histogram is exposed, at zero, before its first observation.
            self.series[()] = [0.0] * (len(self.bounds) + 1)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        slots = self.series.get(labels)
        if slots is None:
            slots = self.series[labels] = [0.0] * (len(self.bounds) + 1)
        slots[bisect_left(self.bounds, value)] += 1.0
        slots[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, slots in self.series.items():
            # Cumulative at scrape time; the +Inf bucket is the count.
            buckets = list(zip(self.les, accumulate(slots[:-1]), strict=True))
            family.add_metric(labels, buckets, slots[-1])
        return family


Tally = TypeVar("Tally", TallyCounter, TallyHistogram)


class Tallies:
    """A custom collector: the per-exchange tallies, in the order they were added."""

    def __init__(self) -> None:
        self.tallies: list[TallyCounter | TallyHistogram] = []

    def add(self, tally: Tally) -> Tally:
        self.tallies.append(tally)
        return tally

    def describe(self) -> list[Metric]:
        # The names, for the registry's check against duplicates: no samples needed.
        return [
            (CounterMetricFamily if isinstance(t, TallyCounter) else HistogramMetricFamily)(
                t.name, t.documentation, labels=t.labelnames
            )
            for t in self.tallies
        ]

    def collect(self) -> Iterator[Metric]:
        for tally in self.tallies:
            yield tally.family()
