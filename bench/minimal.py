"""The baseline: the smallest aiohttp pass-through proxy, as most people would write it.

One shared ``ClientSession`` (``TCPConnector(limit=0)``: no pool limit), round-robin over
the upstreams, and ``resp.content.iter_any()`` -> ``StreamResponse.write()`` per chunk.
No auth, no routing, no metrics, no persistence: what Python plus aiohttp costs for
relaying a stream, so that olbproxy's own cost shows as the difference. Same event loop
(uvloop) and server settings as olbproxy's ``serve``. Run as its own process::

    python -m bench.minimal --listen 127.0.0.1:8001 --upstreams 127.0.0.1:11435,127.0.0.1:11436
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Sequence

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("SESSION", aiohttp.ClientSession)


class Upstreams:
    """Round-robin over the simulators, as nginx's upstream block does."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)
        self.index = 0

    def next(self) -> str:
        self.index = (self.index + 1) % len(self.hosts)
        return self.hosts[self.index]


UPSTREAMS = web.AppKey("UPSTREAMS", Upstreams)
DROP = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "authorization"}
)


async def relay(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAMS].next()
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
    headers["Host"] = upstream
    session = request.app[SESSION]
    url = f"http://{upstream}{request.raw_path}"
    async with session.request(request.method, url, data=body, headers=headers) as answer:
        response = web.StreamResponse(status=answer.status, reason=answer.reason)
        for name, value in answer.headers.items():
            if name.lower() not in DROP:
                response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_app(upstreams: Sequence[str]) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAMS] = Upstreams(upstreams)

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


async def serve(host: str, port: int, upstreams: Sequence[str]) -> None:
    runner = web.AppRunner(
        create_app(upstreams), handler_cancellation=True, access_log=None, shutdown_timeout=1
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.minimal", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--upstreams", required=True, help="comma-separated host:port")
    args = parser.parse_args(argv)
    host, _, port = str(args.listen).rpartition(":")
    upstreams = [u.strip() for u in str(args.upstreams).split(",") if u.strip()]
    uvloop.run(serve(host, int(port), upstreams))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
