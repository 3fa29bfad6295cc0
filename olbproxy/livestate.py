"""Live state: the metrics read from the proxy's own state when Prometheus scrapes.

``LiveState`` is a custom collector (metrics.py registers it in the app's registry):
in-flight requests and slots per backend, health, queue depth and capacity, upstream
errors (``Relay.errors``), placement's decisions and what it has learned (``Planner``),
and the optional sources other parts of the proxy offer (authentication failures, the
persistence backlog), each passed in as a callable. Nothing here is touched while a
request runs: every value is read, at scrape time, from state the proxy keeps anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from olbproxy.placement import Planner
from olbproxy.pool import Pool

# Optional sources, read at scrape time. Auth failures by reason (the authenticator's
# Counter); the persistence backlog by stage, e.g. {"queue": 3, "spool": 120}.
AuthFailures = Callable[[], Mapping[str, int]]
Backlog = Callable[[], Mapping[str, float]]


class LiveState:
    """A custom collector: the pool's live state and the optional sources, read at scrape."""

    def __init__(
        self,
        pool: Pool,
        upstream_errors: Mapping[tuple[str, str], int],
        *,
        auth_failures: AuthFailures | None = None,
        backlog: Backlog | None = None,
        planner: Planner | None = None,
    ) -> None:
        self.pool = pool
        self.upstream_errors = upstream_errors
        self.auth_failures = auth_failures
        self.backlog = backlog
        self.planner = planner

    def describe(self) -> list[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        in_flight, slots, up, waiting, capacity = (
            families[name] for name in ("in_flight", "slots", "up", "waiting", "capacity")
        )
        for group in self.pool.groups.values():
            # A backend listed in two groups is shown under both.
            for backend in group.backends:
                labels = (group.name, backend.label)
                in_flight.add_metric(labels, backend.in_flight)
                slots.add_metric(labels, backend.slots)
                up.add_metric(labels, 1 if backend.healthy else 0)
            waiting.add_metric((group.name,), group.admission.waiting)
            capacity.add_metric((group.name,), group.settings.queue_size)
        errors = families["upstream_errors"]
        for (backend_label, kind), count in sorted(self.upstream_errors.items()):
            errors.add_metric((backend_label, kind), count)
        if self.auth_failures is not None:
            for reason, count in sorted(self.auth_failures().items()):
                families["auth_failures"].add_metric((reason,), count)
        if self.backlog is not None:
            for stage, records in sorted(self.backlog().items()):
                families["backlog"].add_metric((stage,), records)
        if self.planner is not None:
            self._placement(self.planner, families)
        yield from families.values()

    @staticmethod
    def _placement(
        planner: Planner, families: dict[str, GaugeMetricFamily | CounterMetricFamily]
    ) -> None:
        for (group, reason), count in sorted(planner.placements.items()):
            families["placements"].add_metric((group, reason), count)
        for (group, backend), seconds in sorted(planner.prefill_seconds.items()):
            families["prefill"].add_metric((group, backend), seconds)
        for (group, backend), seconds in sorted(planner.saved_seconds.items()):
            families["saved"].add_metric((group, backend), seconds)
        for (group, backend), count in sorted(planner.loads_ahead.items()):
            families["ahead"].add_metric((group, backend), count)
        for backend, model, rates in planner.learned.table():
            for phase, estimate in (("prefill", rates.prefill), ("decode", rates.decode)):
                if (value := estimate.value) is not None:
                    families["rates"].add_metric((backend, model, phase), value)
            if (load := rates.load.value) is not None:
                families["load"].add_metric((backend, model), load)

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        backend = ("group", "backend")
        return {
            "in_flight": GaugeMetricFamily(
                "olbproxy_backend_in_flight",
                "Model requests running on the backend now (taken slots).",
                labels=backend,
            ),
            "slots": GaugeMetricFamily(
                "olbproxy_backend_slots",
                "Concurrent requests the backend takes per model (the group's slots).",
                labels=backend,
            ),
            "up": GaugeMetricFamily(
                "olbproxy_backend_up",
                "1 while the backend is in rotation, 0 while health checks fail.",
                labels=backend,
            ),
            "waiting": GaugeMetricFamily(
                "olbproxy_queue_depth",
                "Model requests waiting for a free slot in the group.",
                labels=("group",),
            ),
            "capacity": GaugeMetricFamily(
                "olbproxy_queue_capacity",
                "Requests the group's queue holds before answering 503 (queue_size).",
                labels=("group",),
            ),
            "upstream_errors": CounterMetricFamily(
                "olbproxy_upstream_errors",
                "Backend failures by kind: connect, reset, busy, timeout, idle_timeout, "
                "stream_broken, other.",
                labels=("backend", "kind"),
            ),
            "auth_failures": CounterMetricFamily(
                "olbproxy_auth_failures",
                "Refused credentials by reason.",
                labels=("reason",),
            ),
            "backlog": GaugeMetricFamily(
                "olbproxy_persistence_backlog",
                "Exchange records not yet in MongoDB, by stage (queue: in memory, "
                "spool: on disk waiting for replay).",
                labels=("stage",),
            ),
            "placements": CounterMetricFamily(
                "olbproxy_placements",
                "Model requests placed on an instance, by why it was that one: sticky, "
                "prefix, resident, round_robin, cold, fallback_busy.",
                labels=("group", "reason"),
            ),
            "prefill": CounterMetricFamily(
                "olbproxy_prefill_seconds",
                "Seconds the instances spent evaluating prompts (prompt_eval_duration).",
                labels=("group", "backend"),
            ),
            "saved": CounterMetricFamily(
                "olbproxy_prefill_saved_seconds",
                "Prompt evaluation the instances' caches saved, estimated: every prompt "
                "token at the learned rate, less the time actually spent.",
                labels=("group", "backend"),
            ),
            "ahead": CounterMetricFamily(
                "olbproxy_loads_ahead",
                "Models loaded on an idle instance because every warm one was busy.",
                labels=("group", "backend"),
            ),
            "rates": GaugeMetricFamily(
                "olbproxy_learned_tokens_per_second",
                "What placement has learned an instance does per model: phase=prefill "
                "(uncached prompt tokens) and phase=decode.",
                labels=("backend", "model", "phase"),
            ),
            "load": GaugeMetricFamily(
                "olbproxy_learned_load_seconds",
                "What placement has learned a cold load of the model takes on the instance.",
                labels=("backend", "model"),
            ),
        }
