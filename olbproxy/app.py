"""create_app(settings) -> web.Application: wiring, lifetimes.

One aiohttp route for every path, and no middlewares: the edge (edge.py) answers CORS
preflights, classifies the request into a route of the table the components contribute,
authenticates and authorises it, and renders every ProxyError in one place (handing it
to the access log). Long-lived resources hang off typed app keys and are
built and torn down in ``cleanup_ctx``, so tests and ``serve`` share one path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from olbproxy.access import ACCESS, AccessLog
from olbproxy.api import OllamaApi
from olbproxy.audit import AuditTrail
from olbproxy.auth.authenticator import Authenticator
from olbproxy.auth.console import Console
from olbproxy.auth.principal import principal_of
from olbproxy.catalog import Catalog
from olbproxy.edge import Edge, Route, RouteTable
from olbproxy.exchange import EXCHANGE, new_id
from olbproxy.health import HealthChecker
from olbproxy.instance import InstanceRoutes
from olbproxy.lag import GcPauses, LoopLag
from olbproxy.lane import Lane
from olbproxy.management import ModelManagement
from olbproxy.metrics import Metrics
from olbproxy.options import header
from olbproxy.persistence.handoff import Handoff
from olbproxy.persistence.placements import PlacementFeed
from olbproxy.persistence.recorder import Recorder
from olbproxy.persistence.recording import Recording
from olbproxy.persistence.rooms import RoomsApi
from olbproxy.placement import Planner
from olbproxy.pool import Backend, Pool
from olbproxy.relay import Relay
from olbproxy.routing import Router
from olbproxy.settings import Settings
from olbproxy.status import Status
from olbproxy.store import Store
from olbproxy.store.backends import open_store
from olbproxy.supervisor import Supervisor
from olbproxy.ui.site import Site
from olbproxy.upstream import Upstream
from olbproxy.warmup import Warmup
from olbproxy.watchdog import Watchdog

log = logging.getLogger("olbproxy.app")

SETTINGS = web.AppKey("SETTINGS", Settings)
POOL = web.AppKey("POOL", Pool)
ROUTER = web.AppKey("ROUTER", Router)
UPSTREAM = web.AppKey("UPSTREAM", Upstream)
RELAY = web.AppKey("RELAY", Relay)
API = web.AppKey("API", OllamaApi)
HEALTH = web.AppKey("HEALTH", HealthChecker)
METRICS = web.AppKey("METRICS", Metrics)
STATUS = web.AppKey("STATUS", Status)
STORE: web.AppKey[Store] = web.AppKey("STORE")
AUTHENTICATOR = web.AppKey("AUTHENTICATOR", Authenticator)
LANE = web.AppKey("LANE", Lane)
RECORDER = web.AppKey("RECORDER", Recording)
EDGE = web.AppKey("EDGE", Edge)
AUDIT = web.AppKey("AUDIT", AuditTrail)
SUPERVISOR = web.AppKey("SUPERVISOR", Supervisor)
LAG = web.AppKey("LAG", LoopLag)
PLANNER = web.AppKey("PLANNER", Planner)
PLACEMENT_FEED = web.AppKey("PLACEMENT_FEED", PlacementFeed)


PLACEMENT_HEADER = "X-Olbproxy-Placement"


def placement_on_prepare() -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """``X-Olbproxy-Placement`` on model answers to admins (``options.header``)."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        exchange = request.get(EXCHANGE)
        if exchange is None or not principal_of(request).is_admin:
            return
        value = header(exchange)
        if value is not None:
            response.headers[PLACEMENT_HEADER] = value

    return on_prepare


async def create_app(settings: Settings) -> web.Application:
    """Build the proxy application; resources start and stop with the app."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    router = Router(settings.groups)
    pool = Pool(settings)
    app[ROUTER], app[POOL] = router, pool

    # Before the sessions: a store the config cannot open fails with nothing to close.
    store = open_store(settings)
    upstream = Upstream.connect(settings)
    app[UPSTREAM] = upstream
    lane = Lane(settings.connect_timeout) if settings.relay.lane else None
    if lane is not None:
        app[LANE] = lane

    async def upstream_lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        if lane is not None:
            lane.close()
        await upstream.close()

    # First, so that it closes last, and also when a later component fails to start.
    app.cleanup_ctx.append(upstream_lifetime)
    supervisor = Supervisor()
    app[SUPERVISOR] = supervisor

    warmup = Warmup(pool, upstream, supervisor)

    def backend_changed(backend: Backend) -> None:
        pool.slot_freed(backend)  # wake waiters: a slot appeared, or their hope vanished
        if backend.healthy:
            warmup.schedule(backend)

    # Check often enough that a stall is noticed within about a quarter of its limit.
    watchdog = Watchdog(tick=min([1.0, *(g.idle_timeout / 4 for g in settings.groups)]))
    relay = Relay(
        upstream,
        watchdog,
        lane=lane,
        fail_threshold=settings.health.fail_threshold,
        on_health_change=backend_changed,
    )
    app[RELAY] = relay
    health = HealthChecker(pool, upstream, settings.health, backend_changed)
    app[HEALTH] = health
    catalog = Catalog(pool, router, upstream, seconds=settings.health.timeout)
    planner = Planner(pool, settings.placement)
    planner.load_ahead = lambda backend, group, model: warmup.ahead(backend, group.settings, model)
    app[PLANNER] = planner
    api = OllamaApi(settings, pool, router, relay, catalog, planner)
    api.observers.append(planner.observe)  # first: learning must not wait for the others
    app[API] = api
    audit = AuditTrail(store, timeout=settings.store.timeout)
    app[AUDIT] = audit
    management = ModelManagement(settings, pool, router, relay, audit)
    access_log = AccessLog(enabled=settings.access_log, json_format=settings.log_format == "json")
    app[ACCESS] = access_log
    api.observers.append(access_log.observe)

    # -- identity (auth/): the edge's authentication, /api/auth/* routes ---------------
    authenticator = Authenticator(settings.auth, store)
    app[STORE], app[AUTHENTICATOR] = store, authenticator

    async def store_lifetime(app: web.Application) -> AsyncIterator[None]:
        await store.start()
        yield
        await supervisor.close()  # whatever background job is left, before the store
        await store.close()

    # Before the other components' lifetimes, so the store closes after they stop.
    app.cleanup_ctx.append(store_lifetime)
    app.cleanup_ctx.append(audit.lifetime)
    routes: list[Route] = []
    if settings.auth.enabled:
        routes += authenticator.accounts.routes()
        console = Console(
            authenticator.accounts, authenticator.directory, lambda: pool.groups.keys()
        )
        routes += console.routes()

        async def identities(app: web.Application) -> AsyncIterator[None]:
            await authenticator.start(supervisor)
            yield

        app.cleanup_ctx.append(identities)

    # -- persistence (recorder, rooms API) -------------------------------------------
    # Chat and generate exchanges are recorded off the request path; only a named room
    # is checked before the backend sees the request. The recorder's lifetime comes
    # after the store's, so on shutdown it writes (or spools) its queue before the store
    # closes.
    # This process among the proxies that share the database (rooms' placements).
    instance = new_id()
    recorder: Recording
    store_settings = settings.store
    if (
        store_settings.record
        and store_settings.recorder == "process"
        and store_settings.backend == "mongodb"
    ):
        recorder = Handoff(settings, store, instance=instance)
    else:
        recorder = Recorder(settings.store, store, instance=instance)
    app[RECORDER] = recorder
    rooms = RoomsApi(store, recorder)
    routes += rooms.routes()

    async def recording(app: web.Application) -> AsyncIterator[None]:
        await recorder.start(supervisor)
        yield
        await recorder.close()  # writes (or spools) what is still queued

    app.cleanup_ctx.append(recording)
    if settings.store.record:
        api.observers.append(recorder.observe)
        api.preflight.append(rooms.preflight)
        # Where rooms' turns ran, as recorded (by this proxy or another): read back so
        # that a continuation finds its instance after a restart, or through a replica.
        # Records wait in the relay up to store.defer while it is busy; half a minute
        # more for the recording process's batches and retries.
        late = settings.store.defer + 30.0
        feed = PlacementFeed(store.rooms, planner, settings.placement, instance=instance, late=late)
        app[PLACEMENT_FEED] = feed
        app.cleanup_ctx.append(feed.lifetime)

    # -- metrics and status ------------------------------------------------------------
    metrics = Metrics(
        settings.metrics,
        pool,
        relay.errors,
        auth_failures=lambda: authenticator.failures,
        backlog=recorder.backlog,
        planner=planner,
        cold_load_seconds=settings.placement.cold_load_seconds,
    )
    app[METRICS] = metrics
    if settings.metrics.enabled:
        api.observers.append(metrics.observe)
    routes += metrics.routes()
    app.cleanup_ctx.append(metrics.listener)
    status = Status(pool, catalog, relay.errors, backlog=recorder.backlog, jobs=supervisor.snapshot)
    app[STATUS] = status
    routes += status.routes()
    routes += api.routes()
    routes += InstanceRoutes(api).routes()
    routes += management.routes()

    # The web page (/ui/): static files, public; it calls the API like any client.
    routes += Site(settings).routes()

    # -- the edge: the one aiohttp route; everything else is refused there ----------------
    edge = Edge(
        RouteTable(routes),
        authenticator.authenticate if settings.auth.enabled else None,
        failures=authenticator.failures,
        origins=settings.origins,
    )
    app[EDGE] = edge
    # [\s\S]: every path, newlines included (the edge refuses those itself, in JSON).
    app.router.add_route("*", r"/{path:[\s\S]*}", edge.dispatch)
    app.on_response_prepare.append(edge.on_prepare)
    if settings.placement.header:
        app.on_response_prepare.append(placement_on_prepare())

    loop_lag = LoopLag(metrics.observe_lag)
    gc_pauses = GcPauses(metrics.observe_gc)
    app[LAG] = loop_lag

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            supervisor.spawn("watchdog", watchdog.run),
            supervisor.spawn("health", health.run),
            supervisor.spawn("loop-lag", loop_lag.run),
        ]
        gc_pauses.install()
        warmup.schedule_all()
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        gc_pauses.remove()
        await warmup.close()

    app.cleanup_ctx.append(lifetime)
    return app


def reload_routing(app: web.Application, settings: Settings) -> None:
    """SIGHUP: take the new routing table; streams in flight keep their backends."""
    app[ROUTER].apply(settings.groups)
    app[POOL].apply(settings)
    lane = app.get(LANE)
    if lane is not None:  # connections kept open to instances the table no longer has
        lane.keep_only({url for group in settings.groups for url in group.endpoints})
    log.info("routing table reloaded from %s: %d groups", settings.source, len(settings.groups))
