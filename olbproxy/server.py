"""The server: runs the app on uvloop, stops gracefully, reloads routing on SIGHUP.

SIGTERM/SIGINT: stop accepting, let in-flight streams finish up to the configured
deadline, then run the app's cleanup (which flushes persistence) and return.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from olbproxy import config
from olbproxy.app import create_app, reload_routing
from olbproxy.errors import ConfigError
from olbproxy.settings import Settings

log = logging.getLogger("olbproxy.server")


async def serve(
    settings: Settings,
    *,
    app: web.Application | None = None,
    ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    app = app or await create_app(settings)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that leaves cancels its upstream request
        shutdown_timeout=settings.shutdown_deadline,
        access_log=None,  # one line per exchange is logged by the app instead
    )
    await runner.setup()
    site = web.TCPSite(
        runner, settings.listen_host, settings.listen_port, backlog=2048, reuse_address=True
    )
    await site.start()
    addresses = [_address(s) for s in runner.addresses]
    for note in settings.notices:
        log.warning("%s", note)
    log.info("olbproxy listening on %s", ", ".join(addresses))
    if ready is not None:
        ready(addresses)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.source != "<defaults>":
        loop.add_signal_handler(signal.SIGHUP, _reload, app, settings.source)
    try:
        await stop.wait()
        log.info(
            "shutting down: no new connections; waiting up to %gs for requests in flight",
            settings.shutdown_deadline,
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    log.info("stopped")


def _reload(app: web.Application, path: str) -> None:
    try:
        settings = config.load(path)
    except ConfigError as exc:
        log.error("reload refused, keeping the current routing table: %s", exc)
        return
    reload_routing(app, settings)


def _address(address: object) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"
    return str(address)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop (requested; on this workload it measures within noise of asyncio)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main())
        return
    uvloop.run(main())
