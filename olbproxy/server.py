"""The server: runs the app on uvloop, stops gracefully, reloads routing on SIGHUP.

SIGTERM/SIGINT: stop accepting, let in-flight streams finish up to the configured
deadline, then run the app's cleanup (which flushes persistence) and return.

A port another program holds is found before anything starts (``check_port``), and a
start that fails half-way (the spool held by another proxy) cleans up what it began,
so either ends in one ``StartupError`` the command line prints as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from olbproxy import config
from olbproxy.app import create_app, reload_routing
from olbproxy.errors import ConfigError, StartupError
from olbproxy.lag import settle_garbage
from olbproxy.settings import Settings
from olbproxy.tls import server_context

log = logging.getLogger("olbproxy.server")


async def serve(
    settings: Settings,
    *,
    app: web.Application | None = None,
    ready: Callable[[list[str]], None] | None = None,
    stop: asyncio.Event | None = None,
    elsewhere: str = "",
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``); ``elsewhere`` says how to pick another
    port when this one is taken (default: the config's listen)."""
    host, port = settings.listen_host, settings.listen_port
    await check_port(host, port, elsewhere=elsewhere)
    ssl_context = server_context(settings)
    app = app or await create_app(settings)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that leaves cancels its upstream request
        shutdown_timeout=settings.shutdown_deadline,
        # aiohttp's own access log is off: access.py writes one line per exchange,
        # refusal, login and sign-up, with who and why.
        access_log=None,
    )
    try:
        await runner.setup()
        site = web.TCPSite(
            runner, host, port, backlog=2048, reuse_address=True, ssl_context=ssl_context
        )
        try:
            await site.start()
        except OSError as exc:
            raise port_error(host, port, exc, elsewhere=elsewhere) from None
    except BaseException:
        await runner.cleanup()  # closes what the app's start opened (store, session)
        raise
    # Start-up's objects (modules, routes, settings) stay out of every later collection.
    settle_garbage()
    addresses = [_address(s, tls=ssl_context is not None) for s in runner.addresses]
    for note in settings.notices:
        log.warning("%s", note)
    if settings.store.backend == "mongodb":
        log.info("config %s, MongoDB database %r", settings.source, settings.store.database)
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


def _address(address: object, *, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"{scheme}://[{host}]:{port}" if ":" in str(host) else f"{scheme}://{host}:{port}"
    return str(address)


# Where a wildcard listener would meet another program on the same port: on macOS
# (BSD sockets) 0.0.0.0:11434 binds beside Ollama.app's 127.0.0.1:11434, and local
# clients would then reach Ollama, not the proxy. So ask loopback whether anyone answers.
_WILDCARDS = ("", "0.0.0.0", "::")


async def check_port(host: str, port: int, *, elsewhere: str = "") -> None:
    """Refuse to start when another program answers on the port we are to listen on."""
    probe = "127.0.0.1" if host in _WILDCARDS else host
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(probe, port)
    except (OSError, TimeoutError):
        return  # nobody answers: binding will tell the rest
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise port_error(host, port, None, elsewhere=elsewhere)


def port_error(host: str, port: int, exc: OSError | None, *, elsewhere: str = "") -> StartupError:
    """One line that says what holds the port and what to do about it."""
    if exc is not None and exc.errno != errno.EADDRINUSE:
        what = exc.strerror or str(exc)
        return StartupError(f"cannot listen on {host}:{port}: {what}")
    hint = (
        "Ollama.app listens there unless moved: quit it, or start it with "
        "OLLAMA_HOST=127.0.0.1:11400"
        if port == 11434
        else f"`lsof -nP -iTCP:{port} -sTCP:LISTEN` shows which program holds it"
    )
    other = elsewhere or "or set another port in the config's listen"
    return StartupError(
        f"cannot listen on {host or '0.0.0.0'}:{port}: the port is in use by another "
        f"program; {hint}; {other}"
    )


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop (requested; on this workload it measures within noise of asyncio)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main())
        return
    uvloop.run(main())
