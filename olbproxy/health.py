"""Health: active probes (``GET /api/version``) that take dead backends out of rotation
and bring them back when they answer again. Passive signals (refused connections,
resets, 5xx) are recorded by the relay on the same Backend state.

A backend that answers is also asked ``GET /api/ps``: which models it has loaded and
until when is what cache-aware placement needs (``Backend.note_loaded``). That second
look never changes the backend's health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from olbproxy.pool import Backend, Pool
from olbproxy.settings import HealthSettings
from olbproxy.upstream import Failure, Upstream

log = logging.getLogger("olbproxy.health")

# Sent with the probes, so that an instance's log (and a test) tells them from clients.
USER_AGENT = "olbproxy-health"


class HealthChecker:
    def __init__(
        self,
        pool: Pool,
        upstream: Upstream,
        settings: HealthSettings,
        on_change: Callable[[Backend], None],
    ) -> None:
        self.pool = pool
        self.upstream = upstream
        self.settings = settings
        self.on_change = on_change

    async def probe(self, backend: Backend) -> None:
        try:
            status, data = await self.upstream.fetch_json(
                backend, "GET", "/api/version", seconds=self.settings.timeout, agent=USER_AGENT
            )
        except Failure as failure:
            reason = f"probe failed: {failure.message}"
            certain = failure.certain
            if backend.mark_failed(reason, threshold=self.settings.fail_threshold, certain=certain):
                log.warning("backend %s is out of rotation: %s", backend.label, reason)
                self.on_change(backend)
            return
        if status != 200 or not isinstance(data, dict):
            if backend.mark_failed(
                f"probe answered {status}", threshold=self.settings.fail_threshold
            ):
                log.warning("backend %s is out of rotation: answered %s", backend.label, status)
                self.on_change(backend)
            return
        backend.version = str(data.get("version") or "") or backend.version
        if backend.mark_ok():
            log.info("backend %s is back in rotation (version %s)", backend.label, backend.version)
            self.on_change(backend)
        await self.residency(backend)

    async def residency(self, backend: Backend) -> None:
        """The models the backend has loaded, from its /api/ps."""
        try:
            status, answer = await self.upstream.fetch_json(
                backend, "GET", "/api/ps", seconds=self.settings.timeout, agent=USER_AGENT
            )
        except Failure as failure:
            log.debug("backend %s: /api/ps failed: %s", backend.label, failure.message)
            return
        if status == 200 and isinstance(answer, dict):
            backend.note_ps(answer)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in self.pool.all_backends()))

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.settings.interval)
