"""The Ollama API as clients see it: its routes, each handler thin.

Model requests (generate, chat, embed, the OpenAI-compatible ``/v1`` ones) take a
slot on one backend of the model's group; metadata requests (show) go round-robin
without a slot; answers about all backends come from the catalog; load and unload
requests go to every backend of the group; model management lives in
management.py. Ollama's account and experimental routes, and paths of a newer Ollama
listed in ``routes.extra``, are instance.py's (off unless the configuration enables
them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from olbproxy.aliases import Aliases
from olbproxy.attempt import Deadlines
from olbproxy.auth.principal import principal_of
from olbproxy.body import (
    BODY,
    RAW,
    check_limits,
    form_field,
    form_field_or,
    is_load_request,
    model_of,
    read_bytes,
    read_json,
    wants_stream,
)
from olbproxy.cache import Bounded
from olbproxy.catalog import Catalog
from olbproxy.edge import MATCH, PATH_SAFE, Route, route, upstream_path
from olbproxy.errors import ProxyError, Unavailable, UpstreamError
from olbproxy.exchange import EXCHANGE, Exchange, final_counters
from olbproxy.placement import Planner
from olbproxy.pool import Group, Pool, RotatePlacement
from olbproxy.relay import Relay
from olbproxy.routing import Router, normalise_model
from olbproxy.seat import seat
from olbproxy.settings import GroupSettings, Settings

log = logging.getLogger("olbproxy.api")

Observer = Callable[[Exchange], None]
Preflight = Callable[[web.Request, Exchange], Awaitable[None]]

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
MARKED_END = frozenset({"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"})


class OllamaApi:
    """Handlers for the native and OpenAI-compatible routes."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        router: Router,
        relay: Relay,
        catalog: Catalog,
        planner: Planner,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.router = router
        self.relay = relay
        self.catalog = catalog
        self.planner = planner  # which instance of the group takes a model request
        self.aliases = Aliases(settings.aliases)
        # /api/show answers by (group, User-Agent, body): (until, content type, bytes).
        self._shown: Bounded[tuple[str, str, bytes], tuple[float, str, bytes]] = Bounded(512)
        # Called with every finished model exchange (metrics, persistence); must not block.
        self.observers: list[Observer] = []
        # Awaited before a model request is placed (e.g. room ownership: 403 before any
        # backend sees the request); may raise a ProxyError.
        self.preflight: list[Preflight] = []

    def routes(self) -> list[Route]:
        model = self.model_request
        table = [
            *route("/", "GET", self.root, "anonymous"),  # clients probe it
            *route("/api/version", "GET", self.version),
            *route("/api/tags", "GET", self.tags),
            *route("/api/ps", "GET", self.ps),
            *route("/api/status", "GET", self.status),
            *route("/v1/audio/transcriptions", "POST", self.transcription),
            *route("/api/show", "POST", self.show),
            *route("/v1/models", "GET", self.openai_models),
            *route("/v1/models/{model:tail}", "GET", self.openai_model),
        ]
        for path in MODEL_ENDPOINTS:
            table += route(path, "POST", model)
        return table

    async def read(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        return await read_json(request, self.settings.max_body_bytes, self.settings.body_timeout)

    async def read_model(
        self, request: web.Request, *, legacy_name: bool = False
    ) -> tuple[bytes, dict[str, Any], str]:
        """The body and the model it names; a body naming an alias is rewritten here, and
        the rewritten body is the one every later step reads (aliases.py)."""
        raw, data = await self.read(request)
        model = model_of(data, legacy_name=legacy_name)
        alias = self.aliases.get(model) if self.aliases else None
        if alias is not None:
            raw, data = self.aliases.rewrite(alias, data)
            request[RAW], request[BODY] = raw, data
            model = alias.model
        return raw, data, model

    # -- answered by the proxy -------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        # Exactly Ollama's text: clients compare it with ==.
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.StreamResponse:
        version = await self.catalog.version(self._allowed(request))
        if version is None:
            raise Unavailable("no backend is reachable to report a version")
        return web.json_response({"version": version})

    async def tags(self, request: web.Request) -> web.StreamResponse:
        tags = await self.catalog.tags(self._allowed(request))
        tags["models"] += self.aliases.listed(tags["models"])
        return web.json_response(tags)

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.catalog.status(self._allowed(request)))

    async def ps(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.catalog.ps(self._allowed(request)))

    async def openai_models(self, request: web.Request) -> web.StreamResponse:
        models = await self.catalog.openai_models(self._allowed(request), self.aliases.listed)
        return web.json_response(models)

    def _allowed(self, request: web.Request) -> Callable[[GroupSettings], bool]:
        groups = principal_of(request).groups
        return lambda group: groups is None or group.name in groups

    # -- routed to the model's group ------------------------------------------------

    def group_for(self, request: web.Request, model: str) -> Group:
        settings = self.router.route(model, principal_of(request).groups)
        return self.pool.groups[settings.name]

    async def show(self, request: web.Request) -> web.StreamResponse:
        raw, _data, model = await self.read_model(request, legacy_name=True)
        group = self.group_for(request, model)
        # Every instance of a group reads one model store, and editors ask on every
        # keystroke (continue #8765): the same question within a few seconds gets the
        # same answer. Ollama answers GitHub Copilot differently: the User-Agent is asked.
        key = (group.name, request.headers.get("User-Agent", ""), raw)
        cached = self._shown.get(key) if len(raw) <= 4096 else None
        if cached is not None and cached[0] > time.monotonic():
            return web.Response(body=cached[2], headers={"Content-Type": cached[1]})
        exchange = Exchange(endpoint=request[MATCH].route.path, model=model, group=group.name)
        response = await self._rotate(request, group, raw, exchange, upstream_path(request))
        seconds = self.settings.show_cache_seconds
        if exchange.status == 200 and exchange.outcome == "done" and seconds > 0:
            content_type = response.headers.get("Content-Type", "application/json")
            answer = b"".join(exchange.chunks)
            self._shown.put(key, (time.monotonic() + seconds, content_type, answer))
        return response

    async def openai_model(self, request: web.Request) -> web.StreamResponse:
        model = self.aliases.target(request[MATCH].params["model"])
        group = self.group_for(request, model)
        exchange = Exchange(endpoint=request[MATCH].route.path, model=model, group=group.name)
        path = quote(f"/v1/models/{model}", safe=PATH_SAFE)
        return await self._rotate(request, group, None, exchange, path)

    async def _rotate(
        self,
        request: web.Request,
        group: Group,
        raw: bytes | None,
        exchange: Exchange,
        path: str,
    ) -> web.StreamResponse:
        return await self.relay.forward(
            request,
            exchange,
            RotatePlacement(group),
            path=path,
            body=raw,
            deadlines=Deadlines(first_byte=group.settings.first_byte_timeout),
            attempts=group.settings.max_attempts,
        )

    async def model_request(self, request: web.Request) -> web.StreamResponse:
        raw, data, model = await self.read_model(request)
        group = self.group_for(request, model)
        check_limits(data, group.settings)
        endpoint = request[MATCH].route.path
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
            client=request.remote,
            key_id=principal.key_id,
            method=request.method,
            bytes_in=len(raw),
            stream=stream,
            sse=openai and stream,
            marked_end=stream and endpoint in MARKED_END,
            request_body=raw,
        )
        request[EXCHANGE] = exchange
        for check in self.preflight:
            await check(request, exchange)
        return await self._serve(request, exchange, group, raw)

    async def transcription(self, request: web.Request) -> web.StreamResponse:
        """``/v1/audio/transcriptions``: a multipart form, routed by its ``model`` field,
        within ``max_body_bytes``; a slot like any model request, never recorded."""
        s = self.settings
        raw = await read_bytes(request, s.max_body_bytes, s.body_timeout)
        content_type = request.headers.get("Content-Type", "")
        model = self.aliases.target(form_field(raw, content_type, "model"))
        group = self.group_for(request, model)
        stream = form_field_or(raw, content_type, "stream", "false").lower() == "true"
        principal = principal_of(request)
        exchange = Exchange(
            endpoint=request[MATCH].route.path,
            model=model,
            group=group.name,
            user=principal.id,
            user_name=principal.name,
            client=request.remote,
            key_id=principal.key_id,
            method=request.method,
            bytes_in=len(raw),
            stream=stream,
            sse=stream,
        )
        request[EXCHANGE] = exchange
        return await self._serve(request, exchange, group, raw)

    async def _serve(
        self, request: web.Request, exchange: Exchange, group: Group, raw: bytes
    ) -> web.StreamResponse:
        """A model request: a slot on one of the group's instances, then the answer."""
        stream, principal = exchange.stream, principal_of(request)
        model = exchange.model or ""
        gs = group.settings
        # Ollama sends nothing until a non-streamed answer is complete, so its first
        # byte comes at the end: such requests get the total timeout instead.
        deadlines = Deadlines(
            first_byte=gs.first_byte_timeout if stream else gs.total_timeout,
            idle=gs.idle_timeout,
        )
        # Placement hashes the prompt, and may pin runner options: then new bytes, which
        # are what is forwarded and recorded from here on.
        body = request.get(BODY)
        placement, pinned = seat(
            self.planner,
            group,
            normalise_model(model),
            principal.id,
            exchange,
            body,
            raw,
            interactive=stream,
        )
        if pinned is not raw:
            raw = request[RAW] = exchange.request_body = pinned
        try:
            return await self.relay.forward(
                request,
                exchange,
                placement,
                path=upstream_path(request),
                body=raw,
                deadlines=deadlines,
                attempts=gs.max_attempts,
                whole=not stream,
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
            raise Unavailable(group.admission.none_healthy(()))
        seconds = group.settings.first_byte_timeout
        path = upstream_path(request)
        calls = (self.relay.send_whole(request, b, path, raw, seconds=seconds) for b in backends)
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
