"""Instance routes: Ollama's routes that act for a whole instance, off unless the
configuration enables them (``routes``).

Ollama's account routes (the instance's ollama.com identity) and experimental ones (they
reach the internet), and paths of a newer Ollama listed in ``routes.extra``: enabled,
they go to one named instance (``routes.instance``) or, for extra routes that name a
model, to that model's group (as api.py routes it). Admins only, unless an extra route
says otherwise.
"""

from __future__ import annotations

from aiohttp import web

from olbproxy.api import OllamaApi
from olbproxy.attempt import Deadlines
from olbproxy.body import model_of
from olbproxy.edge import MATCH, Route, route, upstream_path
from olbproxy.errors import Unavailable
from olbproxy.exchange import Exchange
from olbproxy.pool import Backend, FixedPlacement, RotatePlacement

# Ollama's routes that act on an instance's ollama.com identity or reach the internet:
# off unless the configuration enables them (RoutesSettings).
ACCOUNT_ROUTES = (
    ("/api/me", ("POST",)),
    ("/api/signout", ("POST",)),
    ("/api/user/keys/{key}", ("DELETE",)),
)
EXPERIMENTAL_ROUTES = (
    ("/api/experimental/web_search", ("POST",)),
    ("/api/experimental/web_fetch", ("POST",)),
    ("/api/experimental/model-recommendations", ("GET",)),
)


class InstanceRoutes:
    """Handlers for the routes the configuration enables (see the module docstring)."""

    def __init__(self, api: OllamaApi) -> None:
        self.api = api  # model routes and the body read as OllamaApi does
        self.settings = api.settings
        self.pool = api.pool
        self.relay = api.relay

    def routes(self) -> list[Route]:
        """Account, experimental and extra routes, as the configuration enables them."""
        config = self.settings.routes
        table: list[Route] = []
        fixed: list[tuple[str, tuple[str, ...]]] = []
        if config.account:
            fixed += ACCOUNT_ROUTES
        if config.experimental:
            fixed += EXPERIMENTAL_ROUTES
        refusal = "this route acts for the whole server: it is for admins"
        for path, methods in fixed:
            table += route(path, methods, self.instance_request, "admin", refusal=refusal)
        for extra in config.extra:
            handler = self._extra_by_model if extra.model else self.instance_request
            table += route(extra.path, extra.methods, handler, extra.access, refusal=refusal)
        return table

    async def instance_request(self, request: web.Request) -> web.StreamResponse:
        """Account, experimental and model-less extra routes: one named instance only."""
        backend = self._instance()
        body: bytes | None = None
        if request.body_exists:
            body = await request.read()  # within max_body_bytes (client_max_size)
        longest = max((g.first_byte_timeout for g in self.settings.groups), default=600.0)
        return await self.relay.forward(
            request,
            Exchange(endpoint=request[MATCH].route.path),
            FixedPlacement([backend]),
            path=upstream_path(request),
            body=body,
            deadlines=Deadlines(first_byte=longest),
        )

    def _instance(self) -> Backend:
        url = self.settings.routes.instance
        if url is None:
            url = next((g.endpoints[0] for g in self.settings.groups if g.endpoints), None)
        backend = self.pool.backends.get(url) if url is not None else None
        if backend is None:
            raise Unavailable("no instance is configured for this route (routes.instance)")
        return backend

    async def _extra_by_model(self, request: web.Request) -> web.StreamResponse:
        """An extra route whose JSON body names a model: that model's group, if allowed."""
        raw, data = await self.api.read(request)
        model = model_of(data, legacy_name=True)
        group = self.api.group_for(request, model)
        gs = group.settings
        return await self.relay.forward(
            request,
            Exchange(endpoint=request[MATCH].route.path, model=model, group=group.name),
            RotatePlacement(group),
            path=upstream_path(request),
            body=raw,
            deadlines=Deadlines(first_byte=gs.first_byte_timeout, idle=gs.idle_timeout),
            attempts=gs.max_attempts,
        )
