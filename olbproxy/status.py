"""Status at a glance: every group and backend with health, in-flight/slots, queue depth,
loaded models and the persistence backlog.

``GET /api/olbproxy/status`` answers admins with JSON (``Status``); ``olbproxy status``
(cli/status.py) asks a running proxy for it and prints a table.
Loaded models come from each backend's ``/api/ps``, fetched for every status request
through the catalog, which keeps them on ``Backend.loaded``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from olbproxy.catalog import Catalog
from olbproxy.edge import Route, route
from olbproxy.livestate import Backlog
from olbproxy.pool import Backend, Pool

PATH = "/api/olbproxy/status"


class Status:
    """The admin status endpoint: a snapshot of the pool, refreshed from ``/api/ps``."""

    def __init__(
        self,
        pool: Pool,
        catalog: Catalog,
        upstream_errors: Mapping[tuple[str, str], int],
        *,
        backlog: Backlog | None = None,
        jobs: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.pool = pool
        self.catalog = catalog
        self.upstream_errors = upstream_errors
        self.backlog = backlog
        self.jobs = jobs

    def routes(self) -> list[Route]:
        return route(PATH, "GET", self.handle, "admin", refusal="the proxy status is for admins")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Refreshes Backend.loaded; a backend that does not answer keeps its last list.
        await self.catalog.ps(lambda _group: True)
        return web.json_response(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        groups = []
        for group in self.pool.groups.values():
            backends = [self._backend(b) for b in group.backends]
            groups.append(
                {
                    "name": group.name,
                    "models": list(group.settings.models),
                    "in_flight": sum(b.in_flight for b in group.backends),
                    "slots": sum(b.slots for b in group.backends),
                    "healthy": sum(1 for b in group.backends if b.healthy),
                    "waiting": group.admission.waiting,
                    "queue_size": group.settings.queue_size,
                    "backends": backends,
                }
            )
        backlog = None if self.backlog is None else dict(self.backlog())
        jobs = None if self.jobs is None else self.jobs()
        return {"groups": groups, "persistence": backlog, "jobs": jobs}

    def _backend(self, backend: Backend) -> dict[str, Any]:
        errors = {
            kind: count
            for (label, kind), count in self.upstream_errors.items()
            if label == backend.label
        }
        return {
            "url": backend.url,
            "label": backend.label,
            "healthy": backend.healthy,
            "in_flight": backend.in_flight,
            "slots": backend.slots,
            "version": backend.version,
            "loaded": list(backend.loaded),
            "failures": backend.failures,
            "last_error": backend.last_error,
            "checked_at": backend.checked_at,
            "errors": dict(sorted(errors.items())),
        }
