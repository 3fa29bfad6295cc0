"""create_app(settings) -> web.Application: wiring, middleware order, lifetimes.

Middleware, outermost first: errors (renders every ProxyError in one place), CORS
preflight, authentication. Long-lived resources hang off typed app keys and are
built and torn down in ``cleanup_ctx``, so tests and ``serve`` share one path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from fnmatch import fnmatchcase

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from olbproxy.api import OllamaApi, principal_of
from olbproxy.auth.authenticator import Authenticator
from olbproxy.catalog import Catalog
from olbproxy.errors import ProxyError, render
from olbproxy.exchange import EXCHANGE
from olbproxy.health import HealthChecker
from olbproxy.management import ModelManagement
from olbproxy.metrics import Metrics
from olbproxy.persistence.placements import PlacementFeed
from olbproxy.persistence.recorder import Recorder
from olbproxy.persistence.rooms import RoomsApi
from olbproxy.placement import Planner
from olbproxy.pool import Backend, Pool
from olbproxy.relay import Relay
from olbproxy.routing import Router
from olbproxy.settings import Settings
from olbproxy.splice import SpliceRequest
from olbproxy.status import Status
from olbproxy.store import Store, open_store
from olbproxy.warmup import Warmup
from olbproxy.watchdog import Watchdog

log = logging.getLogger("olbproxy.app")

SETTINGS = web.AppKey("SETTINGS", Settings)
POOL = web.AppKey("POOL", Pool)
ROUTER = web.AppKey("ROUTER", Router)
SESSION = web.AppKey("SESSION", aiohttp.ClientSession)
RELAY = web.AppKey("RELAY", Relay)
API = web.AppKey("API", OllamaApi)
HEALTH = web.AppKey("HEALTH", HealthChecker)
METRICS = web.AppKey("METRICS", Metrics)
STATUS = web.AppKey("STATUS", Status)
STORE: web.AppKey[Store] = web.AppKey("STORE")
AUTHENTICATOR = web.AppKey("AUTHENTICATOR", Authenticator)
RECORDER = web.AppKey("RECORDER", Recorder)
PLANNER = web.AppKey("PLANNER", Planner)
PLACEMENT_FEED = web.AppKey("PLACEMENT_FEED", PlacementFeed)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Ollama's default OLLAMA_ORIGINS: local pages and desktop/editor webviews.
DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
CORS_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Room-Id, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Retry-Count, X-Stainless-Runtime, X-Stainless-Runtime-Version, "
    "X-Stainless-Async, X-Stainless-Helper-Method, X-Stainless-Poll-Helper, "
    "X-Stainless-Custom-Poll-Interval, X-Stainless-Timeout, OpenAI-Beta"
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProxyError as error:
        return render(error, openai_shape=request.path.startswith("/v1/"))
    except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # the client still deserves Ollama's error shape
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(ProxyError(f"internal error: {exc}"), openai_shape=False)


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(origin, p) for p in patterns)


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    patterns = DEFAULT_ORIGINS + origins

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and origin
            and "Access-Control-Request-Method" in request.headers
        ):
            if not origin_allowed(origin, patterns):
                return web.Response(status=403, text="origin not allowed")
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
                    "Access-Control-Allow-Headers": request.headers.get(
                        "Access-Control-Request-Headers", CORS_HEADERS
                    ),
                    "Access-Control-Max-Age": "43200",
                    "Vary": "Origin",
                },
            )
        return await handler(request)

    return cors


def cors_on_prepare(
    origins: tuple[str, ...],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """Adds CORS headers as a response starts, which also covers streamed responses."""
    patterns = DEFAULT_ORIGINS + origins

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and origin_allowed(origin, patterns):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    return on_prepare


PLACEMENT_HEADER = "X-Olbproxy-Placement"


def placement_on_prepare(
    planner: Planner,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """``X-Olbproxy-Placement`` on model answers to admins (``placement.header``)."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        exchange = request.get(EXCHANGE)
        if exchange is None or not principal_of(request).is_admin:
            return
        value = planner.header(exchange)
        if value is not None:
            response.headers[PLACEMENT_HEADER] = value

    return on_prepare


async def create_app(settings: Settings) -> web.Application:
    """Build the proxy application; resources start and stop with the app."""
    app = web.Application(
        middlewares=[error_middleware, cors_middleware(settings.origins)],
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": 65536},
    )
    app[SETTINGS] = settings
    router = Router(settings.groups)
    pool = Pool(settings)
    app[ROUTER], app[POOL] = router, pool

    connector = aiohttp.TCPConnector(
        # Admission control bounds concurrency per backend; a connector limit would only
        # make stream 101 wait behind 100 others (aiohttp's default limit is 100).
        limit=0,
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=300,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
        auto_decompress=False,
        request_class=SpliceRequest,
        # Forward the client's headers as they are; add none of aiohttp's own.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
    app[SESSION] = session

    warmup = Warmup(pool, session)

    def backend_changed(backend: Backend) -> None:
        pool.slot_freed(backend)  # wake waiters: a slot appeared, or their hope vanished
        if backend.healthy:
            warmup.schedule(backend)

    # Check often enough that a stall is noticed within about a quarter of its limit.
    watchdog = Watchdog(tick=min([1.0, *(g.idle_timeout / 4 for g in settings.groups)]))
    relay = Relay(
        session,
        watchdog,
        fail_threshold=settings.health.fail_threshold,
        on_health_change=backend_changed,
    )
    app[RELAY] = relay
    health = HealthChecker(pool, session, settings.health, backend_changed)
    app[HEALTH] = health
    catalog = Catalog(pool, router, relay, seconds=settings.health.timeout)
    planner = Planner(pool, settings.placement)
    planner.load_ahead = lambda backend, group, model: warmup.ahead(backend, group.settings, model)
    app[PLANNER] = planner
    api = OllamaApi(settings, pool, router, relay, catalog, session, planner)
    api.observers.append(planner.observe)  # first: learning must not wait for the others
    app[API] = api
    management = ModelManagement(settings, pool, router, relay, session)

    # -- identity (auth.py): authentication middleware, /api/auth/* routes -----------
    store = open_store(settings)
    authenticator = Authenticator(settings.auth, store)
    app[STORE], app[AUTHENTICATOR] = store, authenticator

    async def store_lifetime(app: web.Application) -> AsyncIterator[None]:
        await store.start()
        yield
        await store.close()

    # Before every other component's lifetime, so the store closes after they stop.
    app.cleanup_ctx.append(store_lifetime)
    if settings.auth.enabled:
        app.middlewares.append(authenticator.middleware)
        app.router.add_routes(authenticator.accounts.routes())
        app.cleanup_ctx.append(authenticator.lifetime)

    # -- persistence (recorder, rooms API) -------------------------------------------
    # Chat and generate exchanges are recorded off the request path; only a named room
    # is checked before the backend sees the request. The recorder's lifetime comes
    # after the store's, so on shutdown it writes (or spools) its queue before the store
    # closes.
    recorder = Recorder(settings.store, store)
    app[RECORDER] = recorder
    rooms = RoomsApi(store, recorder)
    app.router.add_routes(rooms.routes())
    app.cleanup_ctx.append(recorder.lifetime)
    if settings.store.record:
        api.observers.append(recorder.observe)
        api.preflight.append(rooms.preflight)
        # Where rooms' turns ran, as recorded (by this proxy or another): read back so
        # that a continuation finds its instance after a restart, or through a replica.
        feed = PlacementFeed(store.rooms, planner, settings.placement)
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
    for path in metrics.public_paths:
        authenticator.allow_anonymous(path)
    app.router.add_routes(metrics.routes())
    app.cleanup_ctx.append(metrics.listener)
    status = Status(pool, catalog, relay.errors, backlog=recorder.backlog)
    app[STATUS] = status
    app.router.add_routes(status.routes())

    app.router.add_routes(api.routes())
    app.router.add_routes(management.routes())
    # Last: whatever else Ollama serves goes through unchanged.
    app.router.add_route("*", "/{tail:.*}", api.passthrough)
    app.on_response_prepare.append(cors_on_prepare(settings.origins))
    if settings.placement.header:
        app.on_response_prepare.append(placement_on_prepare(planner))

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(watchdog.run(), name="olbproxy-watchdog"),
            asyncio.create_task(health.run(), name="olbproxy-health"),
        ]
        warmup.schedule_all()
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await warmup.close()
        await session.close()

    app.cleanup_ctx.append(lifetime)
    return app


def reload_routing(app: web.Application, settings: Settings) -> None:
    """SIGHUP: take the new routing table; streams in flight keep their backends."""
    app[ROUTER].apply(settings.groups)
    app[POOL].apply(settings)
    log.info("routing table reloaded from %s: %d groups", settings.source, len(settings.groups))
