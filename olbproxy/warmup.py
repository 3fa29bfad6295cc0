"""Warm-up: load each group's models on its instances before the first user needs them.

What the seed's start script did with curl, done by the proxy: on start and whenever
an instance comes back into rotation, ``POST /api/generate`` with an empty prompt
(Ollama's load idiom) and the group's ``keep_alive`` (and pinned options: a load
with other runner options would only be reloaded by the first request). Runs in the
background; a failure is logged and retried the next time the instance comes back.
Placement also asks for a load ahead of need (``ahead``) when every warm instance of a
group is busy.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from olbproxy.pool import Backend, Pool
from olbproxy.settings import GroupSettings

log = logging.getLogger("olbproxy.warmup")

_GLOB = frozenset("*?[")


def warm_models(group: GroupSettings) -> list[str]:
    """The group's literal model names; patterns name no model to load."""
    return [m for m in group.models if _GLOB.isdisjoint(m)]


def keep_alive_value(text: str) -> str | float:
    """YAML's ``keep_alive: -1`` arrives as text; Ollama wants a number of seconds then
    (a string must be a Go duration such as "30m" or "-1m")."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


class Warmup:
    def __init__(self, pool: Pool, session: aiohttp.ClientSession) -> None:
        self.pool = pool
        self.session = session
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, backend: Backend) -> None:
        """Warm ``backend`` for every group that asks for it (start-up, or it came back)."""
        for group in self.pool.groups_of(backend):
            if group.settings.warmup:
                for model in warm_models(group.settings):
                    task = asyncio.create_task(self.load(backend, group.settings, model))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def ahead(self, backend: Backend, group: GroupSettings, model: str) -> None:
        """Load ``model`` on ``backend`` now, in the background (placement.py)."""
        task = asyncio.create_task(self.load(backend, group, model))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def schedule_all(self) -> None:
        for backend in self.pool.all_backends():
            self.schedule(backend)

    async def load(self, backend: Backend, group: GroupSettings, model: str) -> None:
        body: dict[str, object] = {"model": model, "prompt": "", "stream": False}
        if group.keep_alive is not None:
            body["keep_alive"] = keep_alive_value(group.keep_alive)
        if group.pin_options:
            body["options"] = dict(group.pin_options)
        try:
            async with self.session.post(
                backend.url + "/api/generate",
                json=body,
                headers={"Host": backend.host_header, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=group.first_byte_timeout),
            ) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("warm-up of %s on %s failed: %r", model, backend.label, exc)
            return
        if resp.status >= 400:
            log.warning("warm-up of %s on %s: %s %s", model, backend.label, resp.status, text[:200])
        else:
            log.info("warm-up: %s loaded on %s", model, backend.label)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
