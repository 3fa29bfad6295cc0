"""Metrics: every Prometheus metric of olbproxy, named here and in livestate.py.

Two kinds, and neither touches the stream while tokens flow:

* **Per exchange.** ``Metrics.observe`` is one of ``OllamaApi.observers``: it runs once
  per finished model request, after the relay has parsed the final chunk's counters.
  These are tallies in plain dicts and lists, exposed by a custom collector
  (tallies.py), not prometheus_client's own counters and histograms: those cost ~20 µs
  of the event loop per small request.
* **Live state**, read when Prometheus scrapes (``LiveState``, livestate.py): in-flight
  requests and slots per backend, health, queue depth, upstream errors
  (``Relay.errors``), placement's decisions and what it has learned (``Planner``), and
  the optional sources other parts of the proxy offer (authentication failures, the
  persistence backlog), each passed in as a callable.

Every metric lives in the app's own ``CollectorRegistry``: a process may hold several
apps (tests do), and the global default registry would refuse the second one.

Labels are bounded by the configuration: ``endpoint`` is a route of the API, ``group``
and ``backend`` (host:port) come from the config file. ``model`` appears only on
exchanges a backend answered in full (see ``observe``), and ``user`` only when
``metrics.user_labels`` is true. The tallies keep one entry per label set forever, as
prometheus_client did: that is only safe because the sets are bounded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler

from olbproxy.body import NUMBER
from olbproxy.config import parse_listen
from olbproxy.edge import Access, Route, route
from olbproxy.exchange import Exchange
from olbproxy.livestate import AuthFailures, Backlog, LiveState
from olbproxy.placement import Planner
from olbproxy.pool import Pool
from olbproxy.routing import normalise_model
from olbproxy.settings import MetricsSettings
from olbproxy.tallies import Tallies, TallyCounter, TallyHistogram

log = logging.getLogger("olbproxy.metrics")

PATH = "/metrics"

# A load_duration at or above this means the model had to be read from disk. A warm
# request's load_duration is a few milliseconds, and even the 20b model takes seconds
# to load on a Mac Studio, so one second separates the two with room on both sides.
COLD_LOAD_SECONDS = 1.0

# Bucket bounds in seconds (tokens per second for THROUGHPUT). Chosen for LLM serving:
# first tokens of a warm model arrive in well under a second, a cold 120b load takes
# minutes, and answers stream for up to the groups' total timeout (30 min).
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
THROUGHPUT_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000, 5000)
# The proxy's own stalls: a millisecond is noticed, 50 ms is a problem for every stream.
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The registry, the per-exchange metrics, and the ``/metrics`` endpoint."""

    def __init__(
        self,
        settings: MetricsSettings,
        pool: Pool,
        upstream_errors: Mapping[tuple[str, str], int],
        *,
        auth_failures: AuthFailures | None = None,
        backlog: Backlog | None = None,
        planner: Planner | None = None,
        cold_load_seconds: float = COLD_LOAD_SECONDS,
    ) -> None:
        self.settings = settings
        self.cold_load_seconds = cold_load_seconds
        self.registry = CollectorRegistry()
        self.live = LiveState(
            pool, upstream_errors, auth_failures=auth_failures, backlog=backlog, planner=planner
        )
        self.registry.register(self.live)
        self._user_labels = settings.user_labels
        user = ("user",) if settings.user_labels else ()
        tallies = self.tallies = Tallies()
        self.requests = tallies.add(
            TallyCounter(
                "olbproxy_requests",
                "Model requests by route, group, backend, HTTP status and outcome "
                "(done, error, cancelled: the client left).",
                ("endpoint", "group", "backend", "status", "outcome", *user),
            )
        )
        self.queue_wait = tallies.add(
            TallyHistogram(
                "olbproxy_queue_wait_seconds",
                "Time model requests waited for a free slot.",
                ("group",),
                QUEUE_BUCKETS,
            )
        )
        self.ttft = tallies.add(
            TallyHistogram(
                "olbproxy_time_to_first_token_seconds",
                "Time from the request to the first byte of a streamed answer "
                "(successful streams).",
                ("group", "model"),
                TTFT_BUCKETS,
            )
        )
        self.duration = tallies.add(
            TallyHistogram(
                "olbproxy_request_duration_seconds",
                "Time from the request to the end of the answer (successful requests).",
                ("endpoint", "group", "model"),
                DURATION_BUCKETS,
            )
        )
        self.prompt_tokens = tallies.add(
            TallyCounter(
                "olbproxy_prompt_tokens",
                "Prompt tokens evaluated, from Ollama's prompt_eval_count.",
                ("group", "backend", "model", *user),
            )
        )
        self.generated_tokens = tallies.add(
            TallyCounter(
                "olbproxy_generated_tokens",
                "Tokens generated, from Ollama's eval_count.",
                ("group", "backend", "model", *user),
            )
        )
        self.throughput = tallies.add(
            TallyHistogram(
                "olbproxy_tokens_per_second",
                "Ollama's own speed per request: eval_count/eval_duration (phase=generation) "
                "and prompt_eval_count/prompt_eval_duration (phase=prompt).",
                ("group", "model", "phase"),
                THROUGHPUT_BUCKETS,
            )
        )
        self.load_time = tallies.add(
            TallyHistogram(
                "olbproxy_model_load_seconds",
                "Ollama's load_duration: milliseconds when the model is resident, seconds "
                "when it had to be loaded.",
                ("group", "backend", "model"),
                LOAD_BUCKETS,
            )
        )
        self.cold_loads = tallies.add(
            TallyCounter(
                "olbproxy_cold_loads",
                f"Requests whose load_duration was at least {cold_load_seconds:g}s: "
                "the model was loaded for them.",
                ("group", "backend", "model"),
            )
        )
        self.loop_lag = tallies.add(
            TallyHistogram(
                "olbproxy_event_loop_lag_seconds",
                "How late the event loop woke a 50 ms sleeper: the proxy's own stalls, felt "
                "by every stream at once.",
                (),
                LAG_BUCKETS,
            )
        )
        # Registered before the GC histogram: /metrics lists the families in this order.
        self.registry.register(tallies)
        # GC pauses stay with prometheus_client's locked histogram: gc.callbacks run on
        # whichever thread allocates (bcrypt and spool workers too), not only on the
        # loop, and a few collections a second make its cost irrelevant.
        self.gc_pauses = Histogram(
            "olbproxy_gc_pause_seconds",
            "Garbage collections of CPython and how long each held the event loop.",
            ("generation",),
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._gc_children = [self.gc_pauses.labels(str(g)) for g in range(3)]
        self._handler = make_aiohttp_handler(self.registry)

    # -- the proxy's own stalls (lag.py) ---------------------------------------------

    def observe_lag(self, seconds: float) -> None:
        self.loop_lag.observe((), seconds)

    def observe_gc(self, generation: int, seconds: float) -> None:
        self._gc_children[min(max(generation, 0), 2)].observe(seconds)

    # -- per exchange ---------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        """Count one finished model exchange; an ``OllamaApi`` observer."""
        group = exchange.group or "none"
        backend = exchange.backend or "none"
        endpoint = exchange.endpoint
        user = (exchange.user_name,) if self._user_labels else ()
        self.requests.inc(
            (endpoint, group, backend, _status(exchange), exchange.outcome, *user), 1.0
        )
        if exchange.attempts:
            self.queue_wait.observe((group,), exchange.queue_wait)
        if exchange.outcome != "done" or exchange.status >= 400 or not exchange.model:
            return
        # The model name is the client's to choose: a catch-all group forwards any name
        # and the backend answers 404 to a typo. Only a complete answer proves the model
        # is installed, so only then is the name a bounded label. Latencies of failures
        # would only blur the percentiles; they are in olbproxy_requests_total.
        model = normalise_model(exchange.model)
        if exchange.stream and (ttft := exchange.ttft) is not None:
            self.ttft.observe((group, model), ttft)
        if (duration := exchange.duration) is not None:
            self.duration.observe((endpoint, group, model), duration)
        counters = exchange.counters
        prompt = _number(counters.get("prompt_eval_count"))
        generated = _number(counters.get("eval_count"))
        # Counters only go up (a decrease reads as a restart to Prometheus); Ollama never
        # sends a negative count, and prometheus_client refused one.
        if prompt is not None and prompt > 0:
            self.prompt_tokens.inc((group, backend, model, *user), prompt)
        if generated is not None and generated > 0:
            self.generated_tokens.inc((group, backend, model, *user), generated)
        # Ollama's durations are nanoseconds; they exclude queueing and the network.
        eval_ns = _number(counters.get("eval_duration"))
        if generated and eval_ns:
            self.throughput.observe((group, model, "generation"), generated * 1e9 / eval_ns)
        prompt_ns = _number(counters.get("prompt_eval_duration"))
        if prompt and prompt_ns:
            self.throughput.observe((group, model, "prompt"), prompt * 1e9 / prompt_ns)
        load_ns = _number(counters.get("load_duration"))
        if load_ns is not None:
            seconds = load_ns / 1e9
            self.load_time.observe((group, backend, model), seconds)
            if seconds >= self.cold_load_seconds:
                self.cold_loads.inc((group, backend, model), 1.0)

    # -- exposition -----------------------------------------------------------------

    def routes(self) -> list[Route]:
        """``/metrics`` on the main listener, unless disabled or served on its own port:
        open to anyone, or to admins only (``metrics.access: token``)."""
        s = self.settings
        if not s.enabled or s.listen:
            return []
        access: Access = "anonymous" if s.access == "open" else "admin"
        refusal = "metrics are for admins (metrics.access: token)"
        return route(PATH, "GET", self._handler, access, refusal=refusal)

    async def listener(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: serve ``/metrics`` alone on ``metrics.listen`` when configured."""
        settings = self.settings
        if not settings.enabled or not settings.listen:
            yield
            return
        host, port = parse_listen(settings.listen, "metrics.listen")
        if settings.access == "token":
            # That port has no authentication middleware: the address is the access control.
            log.warning(
                "metrics.access: token does not apply to metrics.listen %s; anyone who can "
                "reach that address can read the metrics: bind it to loopback",
                settings.listen,
            )
        metrics_app = web.Application()
        metrics_app.router.add_get(PATH, self._handler)
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            log.info("metrics on http://%s:%d%s", host, port, PATH)
            yield
        finally:
            await runner.cleanup()


def _status(exchange: Exchange) -> str:
    if exchange.status:
        return str(exchange.status)
    # No status reached the client: Ollama's own 499 when it left, else our 500.
    return "499" if exchange.outcome == "cancelled" else "500"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, NUMBER):
        return None
    return float(value)
