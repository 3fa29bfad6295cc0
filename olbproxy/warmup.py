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
from functools import partial

from olbproxy.pool import Backend, Pool
from olbproxy.settings import GroupSettings
from olbproxy.supervisor import Supervisor
from olbproxy.upstream import Failure, Upstream

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
    def __init__(self, pool: Pool, upstream: Upstream, supervisor: Supervisor) -> None:
        self.pool = pool
        self.upstream = upstream
        self.supervisor = supervisor
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, backend: Backend) -> None:
        """Warm ``backend`` for every group that asks for it (start-up, or it came back)."""
        for group in self.pool.groups_of(backend):
            if group.settings.warmup:
                for model in warm_models(group.settings):
                    task = self.supervisor.spawn(
                        f"warmup {model} on {backend.label}",
                        partial(self.load, backend, group.settings, model),
                        restart=False,
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def ahead(self, backend: Backend, group: GroupSettings, model: str) -> None:
        """Load ``model`` on ``backend`` now, in the background (placement.py)."""
        task = self.supervisor.spawn(
            f"load ahead {model} on {backend.label}",
            partial(self.load, backend, group, model),
            restart=False,
        )
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
            status, answer = await self.upstream.fetch_json(
                backend, "POST", "/api/generate", json=body, seconds=group.first_byte_timeout
            )
        except Failure as failure:
            log.warning("warm-up of %s on %s failed: %s", model, backend.label, failure.message)
            return
        if status >= 400:
            log.warning("warm-up of %s on %s: %s %s", model, backend.label, status, answer)
        else:
            log.info("warm-up: %s loaded on %s", model, backend.label)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
