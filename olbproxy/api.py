"""The Ollama API as clients see it: every route, each handler thin.

Model requests (generate, chat, embed, the OpenAI-compatible ``/v1`` ones) take a
slot on one backend of the model's group; metadata requests (show) go round-robin
without a slot; answers about all backends come from the catalog; load and unload
requests go to every backend of the group; model management lives in
management.py. Whatever else Ollama serves goes through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from olbproxy.auth.principal import OPEN, PRINCIPAL, Principal
from olbproxy.body import check_limits, is_load_request, model_of, read_json, wants_stream
from olbproxy.catalog import Catalog
from olbproxy.errors import MethodNotAllowed, ProxyError, Unavailable, UpstreamError
from olbproxy.exchange import EXCHANGE, Exchange, final_counters
from olbproxy.placement import Planner
from olbproxy.pool import FixedPlacement, Group, Pool, RotatePlacement
from olbproxy.relay import Deadlines, Relay
from olbproxy.routing import Router, normalise_model
from olbproxy.settings import GroupSettings, Settings

log = logging.getLogger("olbproxy.api")

Observer = Callable[[Exchange], None]
Preflight = Callable[[web.Request, Exchange], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Requests that make a model generate: they take a slot and may be persisted.
MODEL_ENDPOINTS = (
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)


# Token streams whose end Ollama marks in the answer itself (done:true, [DONE]), which is
# what a spliced stream needs to tell a finished answer from a dead backend (splice.py).
SPLICED = frozenset({"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"})


def principal_of(request: web.Request) -> Principal:
    principal: Principal = request.get(PRINCIPAL, OPEN)
    return principal


class OllamaApi:
    """Handlers for the native and OpenAI-compatible routes."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        router: Router,
        relay: Relay,
        catalog: Catalog,
        session: aiohttp.ClientSession,
        planner: Planner,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.router = router
        self.relay = relay
        self.catalog = catalog
        self.session = session
        self.planner = planner  # which instance of the group takes a model request
        # Called with every finished model exchange (metrics, persistence); must not block.
        self.observers: list[Observer] = []
        # Awaited before a model request is placed (e.g. room ownership: 403 before any
        # backend sees the request); may raise a ProxyError.
        self.preflight: list[Preflight] = []

    def routes(self) -> list[web.RouteDef]:
        model = self.model_request
        table: list[tuple[str, tuple[str, ...], Handler]] = [
            ("/", ("GET",), self.root),
            ("/api/version", ("GET",), self.version),
            ("/api/tags", ("GET",), self.tags),
            ("/api/ps", ("GET",), self.ps),
            ("/api/show", ("POST",), self.show),
            ("/v1/models", ("GET",), self.openai_models),
            ("/v1/models/{model:.+}", ("GET",), self.openai_model),
            *((path, ("POST",), model) for path in MODEL_ENDPOINTS),
        ]
        return method_table(table)

    async def read(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        return await read_json(request, self.settings.max_body_bytes, self.settings.body_timeout)

    # -- answered by the proxy -------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        # Exactly Ollama's text: clients compare it with ==.
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.StreamResponse:
        version = await self.catalog.version()
        if version is None:
            raise Unavailable("no backend is reachable to report a version", retry_after=5)
        return web.json_response({"version": version})

    async def tags(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.catalog.tags(self._allowed(request)))

    async def ps(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.catalog.ps(self._allowed(request)))

    async def openai_models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.catalog.openai_models(self._allowed(request)))

    def _allowed(self, request: web.Request) -> Callable[[GroupSettings], bool]:
        groups = principal_of(request).groups
        return lambda group: groups is None or group.name in groups

    # -- routed to the model's group ------------------------------------------------

    def group_for(self, request: web.Request, model: str) -> Group:
        settings = self.router.route(model, principal_of(request).groups)
        return self.pool.groups[settings.name]

    async def show(self, request: web.Request) -> web.StreamResponse:
        raw, data = await self.read(request)
        group = self.group_for(request, model_of(data))
        return await self._rotate(request, group, raw)

    async def openai_model(self, request: web.Request) -> web.StreamResponse:
        group = self.group_for(request, request.match_info["model"])
        return await self._rotate(request, group, None)

    async def _rotate(
        self, request: web.Request, group: Group, raw: bytes | None
    ) -> web.StreamResponse:
        exchange = Exchange(endpoint=request.path, group=group.name)
        return await self.relay.forward(
            request,
            exchange,
            RotatePlacement(group),
            body=raw,
            deadlines=Deadlines(first_byte=group.settings.first_byte_timeout),
            attempts=group.settings.max_attempts,
        )

    async def model_request(self, request: web.Request) -> web.StreamResponse:
        raw, data = await self.read(request)
        model = model_of(data)
        group = self.group_for(request, model)
        check_limits(data, group.settings)
        endpoint = request.match_info.route.resource.canonical  # type: ignore[union-attr]
        if is_load_request(endpoint, data):
            return await self.fan_out(request, group, raw)
        openai = endpoint.startswith("/v1/")
        stream = wants_stream(data, default=not openai)
        principal = principal_of(request)
        exchange = Exchange(
            endpoint=endpoint,
            model=model,
            group=group.name,
            user=principal.id,
            user_name=principal.name,
            stream=stream,
            sse=openai and stream,
            splice=stream and endpoint in SPLICED,
            body=data,
        )
        request[EXCHANGE] = exchange
        for check in self.preflight:
            await check(request, exchange)
        gs = group.settings
        # Ollama sends nothing until a non-streamed answer is complete, so its first
        # byte comes at the end: such requests get the total timeout instead.
        deadlines = Deadlines(
            first_byte=gs.first_byte_timeout if stream else gs.total_timeout,
            idle=gs.idle_timeout,
        )
        # May pin runner options (new bytes), and hashes the prompt for placement.
        placement, raw = self.planner.seat(
            group, normalise_model(model), principal.id, exchange, data, raw, interactive=stream
        )
        try:
            return await self.relay.forward(
                request,
                exchange,
                placement,
                body=raw,
                deadlines=deadlines,
                attempts=gs.max_attempts,
            )
        except ProxyError as error:
            exchange.outcome, exchange.error, exchange.status = "error", error.message, error.status
            raise
        except asyncio.CancelledError:
            if exchange.outcome == "pending":
                exchange.outcome = "cancelled"
            raise
        finally:
            self.observe(exchange)

    def observe(self, exchange: Exchange) -> None:
        """Hand a finished exchange to metrics and persistence (both only enqueue or count)."""
        if exchange.ended is None:
            exchange.ended = time.monotonic()
        if exchange.chunks:
            exchange.counters = final_counters(exchange)
        for observer in self.observers:
            try:
                observer(exchange)
            except Exception:  # an observer must never break a request
                log.exception("observer %r failed on exchange %s", observer, exchange.id)

    async def fan_out(self, request: web.Request, group: Group, raw: bytes) -> web.StreamResponse:
        """Load or unload on every backend of the group (Open WebUI's unload button)."""
        backends = group.healthy()
        if not backends:
            raise Unavailable(group.admission.none_healthy(()), retry_after=5)
        seconds = group.settings.first_byte_timeout
        calls = (self.relay.send_whole(request, b, raw, seconds=seconds) for b in backends)
        results = await asyncio.gather(*calls, return_exceptions=True)
        answers = [r for r in results if isinstance(r, tuple)]
        for backend, result in zip(backends, results, strict=True):
            if not isinstance(result, tuple) or result[0] >= 400:
                log.warning("load/unload on %s failed: %r", backend.label, result)
        chosen = next((a for a in answers if a[0] < 400), answers[0] if answers else None)
        if chosen is None:
            raise UpstreamError(f"no backend of group {group.name!r} answered: {results[0]!r}")
        status, content_type, body = chosen
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    # -- everything else Ollama serves ----------------------------------------------

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """Unknown paths go through unchanged, to the model's group when the body names one."""
        body: bytes | aiohttp.StreamReader | None = None
        model: str | None = None
        if request.body_exists and "json" in request.content_type:
            body, data = await self.read(request)
            model = data.get("model") if isinstance(data.get("model"), str) else None
        elif request.body_exists:
            body = request.content
        exchange = Exchange(endpoint=request.path, model=model)
        if model:
            group = self.group_for(request, model)
            exchange.group = group.name
            placement: RotatePlacement | FixedPlacement = RotatePlacement(group)
            deadlines = Deadlines(
                first_byte=group.settings.first_byte_timeout, idle=group.settings.idle_timeout
            )
        else:
            backend = self.pool.rotate_any()
            if backend is None:
                raise Unavailable("no healthy backend", retry_after=5)
            placement = FixedPlacement([backend])
            # Whatever it is, no group would wait longer for a first byte.
            longest = max((g.first_byte_timeout for g in self.settings.groups), default=600.0)
            deadlines = Deadlines(first_byte=longest)
        return await self.relay.forward(
            request, exchange, placement, body=body, deadlines=deadlines, attempts=2
        )


def method_table(table: list[tuple[str, tuple[str, ...], Handler]]) -> list[web.RouteDef]:
    """Routes for each path, plus a 405 for every other method on a path we know."""
    defs: list[web.RouteDef] = []
    for path, methods, handler in table:
        for method in methods:
            if method == "GET":
                defs.append(web.get(path, handler))  # HEAD comes with it, as in Ollama
            else:
                defs.append(web.route(method, path, handler))
        allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else set(methods)))

        async def not_allowed(request: web.Request, allowed: str = allowed) -> web.Response:
            message = f"method {request.method} is not allowed on {request.path}"
            raise MethodNotAllowed(message, allow=allowed)

        defs.append(web.route("*", path, not_allowed))
    return defs
