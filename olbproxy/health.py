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

import aiohttp

from olbproxy.pool import Backend, Pool
from olbproxy.settings import HealthSettings

log = logging.getLogger("olbproxy.health")

# Sent with the probes, so that an instance's log (and a test) tells them from clients.
USER_AGENT = "olbproxy-health"


class HealthChecker:
    def __init__(
        self,
        pool: Pool,
        session: aiohttp.ClientSession,
        settings: HealthSettings,
        on_change: Callable[[Backend], None],
    ) -> None:
        self.pool = pool
        self.session = session
        self.settings = settings
        self.on_change = on_change

    async def probe(self, backend: Backend) -> None:
        try:
            async with self.session.get(
                backend.url + "/api/version",
                headers={"Host": backend.host_header, "User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as resp:
                data = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = f"probe failed: {exc.__class__.__name__} {exc}".strip()
            certain = isinstance(exc, aiohttp.ClientConnectorError)
            if backend.mark_failed(reason, threshold=self.settings.fail_threshold, certain=certain):
                log.warning("backend %s is out of rotation: %s", backend.label, reason)
                self.on_change(backend)
            return
        if not isinstance(data, dict):
            if backend.mark_failed(
                f"probe answered {resp.status}", threshold=self.settings.fail_threshold
            ):
                log.warning(
                    "backend %s is out of rotation: answered %s", backend.label, resp.status
                )
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
            async with self.session.get(
                backend.url + "/api/ps",
                headers={"Host": backend.host_header, "User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            ) as resp:
                answer = await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("backend %s: /api/ps failed: %r", backend.label, exc)
            return
        if isinstance(answer, dict):
            backend.note_ps(answer)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in self.pool.all_backends()))

    async def run(self) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(self.settings.interval)
