"""The supervisor: every background loop of the proxy, kept alive and visible.

The identity cache refresh, the health probes, the watchdog, the recorder's writer,
spooler and replay, and the warm-ups run as named jobs. A loop that fails is logged with
its traceback and started again after a pause that doubles up to ``backoff[1]`` while it
keeps failing (and resets once it has run for a minute), so that one unexpected error
cannot leave revoked keys working or dead backends in rotation for the rest of the
process's life. One-shot jobs (warm-ups) are not restarted. ``snapshot()`` shows each
job's state on the status page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("olbproxy.supervisor")

State = Literal["running", "restarting", "finished", "failed"]
HEALTHY_RUN = 60.0  # seconds a loop must run before its backoff starts over


@dataclass(slots=True, eq=False)
class Job:
    name: str
    run: Callable[[], Awaitable[None]] = field(repr=False)
    restart: bool
    state: State = "running"
    restarts: int = 0
    last_error: str | None = None
    failed_at: float | None = None  # wall clock
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts, restarts and stops the proxy's background jobs."""

    def __init__(self, *, backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.backoff = backoff
        self.jobs: dict[str, Job] = {}
        self._serial = 0

    def spawn(
        self, name: str, run: Callable[[], Awaitable[None]], *, restart: bool = True
    ) -> asyncio.Task[None]:
        """Run ``run()`` as a job; a loop (``restart``) is started again when it fails.
        Cancelling the returned task stops the job."""
        if name in self.jobs and not restart:
            self._serial += 1
            name = f"{name}#{self._serial}"
        job = Job(name, run, restart)
        self.jobs[name] = job
        job.task = asyncio.create_task(self._keep(job), name=f"olbproxy-{name}")
        if not restart:
            job.task.add_done_callback(lambda _t: self._forget(job))
        return job.task

    def _forget(self, job: Job) -> None:
        # Finished one-shots leave; failed ones stay visible until the next of that name.
        if job.state == "finished" and self.jobs.get(job.name) is job:
            del self.jobs[job.name]

    async def _keep(self, job: Job) -> None:
        delay = self.backoff[0]
        while True:
            job.state = "running"
            started = time.monotonic()
            try:
                await job.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                job.last_error = f"{type(exc).__name__}: {exc}"
                job.failed_at = time.time()
                if not job.restart:
                    job.state = "failed"
                    log.exception("background job %s failed", job.name)
                    return
                if time.monotonic() - started >= HEALTHY_RUN:
                    delay = self.backoff[0]
                job.state = "restarting"
                job.restarts += 1
                log.exception("background job %s failed; restarting it in %gs", job.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            job.state = "finished"
            log.debug("background job %s finished", job.name)
            return

    async def close(self) -> None:
        """Stop every job and wait for them."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {
            job.name: {
                "state": job.state,
                "restarts": job.restarts,
                "last_error": job.last_error,
                "failed_at": job.failed_at,
            }
            for job in self.jobs.values()
        }

    def __repr__(self) -> str:
        states = ", ".join(f"{j.name}={j.state}" for j in self.jobs.values())
        return f"<Supervisor {states}>"
