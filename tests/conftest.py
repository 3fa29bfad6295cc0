"""Shared fixtures: simulated Ollama backends and the proxy, each on a real socket."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mongo import MongoServer

from olbproxy.app import create_app
from olbproxy.settings import GroupSettings, Settings
from olbproxy.simulator import OllamaSimulator
from olbproxy.store import Store
from olbproxy.store.backends import open_store


@dataclass
class Proxy:
    """A running proxy: its URL, app and settings, and a client session to call it."""

    url: str
    app: web.Application
    settings: Settings
    runner: web.AppRunner
    http: aiohttp.ClientSession

    async def stop(self) -> None:
        await self.runner.cleanup()


def group(
    name: str, models: tuple[str, ...], sims: list[OllamaSimulator], **kw: Any
) -> GroupSettings:
    return GroupSettings(name=name, models=models, endpoints=tuple(s.url for s in sims), **kw)


# OLBPROXY_SPLICE=0 runs a suite with the splice and the lane off (relay.splice and
# relay.lane false: aiohttp's documented API only): `make test` runs the relay, splice,
# client and failover tests both ways.
SPLICE = os.environ.get("OLBPROXY_SPLICE", "1") != "0"


def make_settings(*groups: GroupSettings, **overrides: Any) -> Settings:
    """Test settings: no auth unless asked, memory store, fast health checks."""
    base = Settings(listen_host="127.0.0.1", listen_port=0, groups=groups, source="<test>")
    sections = {f.name for f in dataclasses.fields(Settings)}
    nested: dict[str, Any] = {
        "auth": replace(base.auth, enabled=False),
        "store": replace(base.store, backend="memory"),
        "health": replace(base.health, interval=0.2, timeout=1.0),
        "relay": replace(base.relay, splice=SPLICE, lane=SPLICE),
    }
    for key, value in overrides.items():
        assert key in sections, key
        nested[key] = value
    return replace(base, **nested)


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (the default ``store.spool_dir``, var/spool) land in the test's own
    directory: a record one test spools must never be replayed by the next."""
    monkeypatch.chdir(tmp_path)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition on the proxy's own state (simulators have wait_until for theirs)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  (no event exists for these states)
            await asyncio.sleep(0.01)


StartSims = Callable[..., Awaitable[list[OllamaSimulator]]]
StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_sims() -> AsyncIterator[StartSims]:
    running: list[OllamaSimulator] = []

    async def start(count: int = 1, prefix: str = "sim", **kwargs: Any) -> list[OllamaSimulator]:
        sims = []
        for i in range(count):
            sim = OllamaSimulator(name=f"{prefix}{i + 1}", **kwargs)
            await sim.start()
            running.append(sim)
            sims.append(sim)
        return sims

    yield start
    for sim in running:
        await sim.stop()


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    running: list[Proxy] = []

    async def start(settings: Settings, app: web.Application | None = None) -> Proxy:
        app = app or await create_app(settings)
        # Same runner options as `olbproxy serve`: a client leaving cancels its handler.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession()
        proxy = Proxy(f"http://127.0.0.1:{port}", app, settings, runner, http)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        await proxy.http.close()
        await proxy.runner.cleanup()


async def seed_layout(
    start_sims: StartSims, start_proxy: StartProxy, **group_settings: Any
) -> tuple[Proxy, list[OllamaSimulator], list[OllamaSimulator]]:
    """The seed's layout: three 20b backends and two 120b backends behind one proxy."""
    small = await start_sims(3, prefix="s", tokens_per_second=0)
    large = await start_sims(2, prefix="l", tokens_per_second=0)
    settings = make_settings(
        group("20b", ("gpt-oss:20b",), small, **group_settings),
        group("120b", ("gpt-oss:120b",), large, **group_settings),
    )
    proxy = await start_proxy(settings)
    return proxy, small, large


@pytest.fixture
async def seed(
    start_sims: StartSims, start_proxy: StartProxy
) -> tuple[Proxy, list[OllamaSimulator], list[OllamaSimulator]]:
    """The seed's layout with the default (cache-aware) placement."""
    return await seed_layout(start_sims, start_proxy)


@pytest.fixture
async def seed_round_robin(
    start_sims: StartSims, start_proxy: StartProxy
) -> tuple[Proxy, list[OllamaSimulator], list[OllamaSimulator]]:
    """The seed's layout placing round-robin, for tests whose point is that order."""
    return await seed_layout(start_sims, start_proxy, placement="round_robin")


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """One MongoDB wire-protocol server for the session; tests use their own databases."""
    import asyncio

    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    asyncio.run(server.start())
    yield server
    asyncio.run(server.stop())


@pytest.fixture
def mongo_uri(mongo_server: MongoServer) -> str:
    """The shared server's URI with a database name of this test's own."""
    return mongo_server.uri.replace("/?", f"/t{uuid.uuid4().hex[:12]}?")


@pytest.fixture
async def own_mongo(tmp_path: Path) -> AsyncIterator[MongoServer]:
    """A MongoDB server of this test's own, for fault tests that stop and restart it."""
    server = MongoServer(tmp_path / "mongo")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=["memory", "mongodb"])
def store_uri(request: pytest.FixtureRequest) -> str | None:
    """The store tests run against both backends: the same contract."""
    # Sync, so that the session's MongoDB server starts outside the event loop.
    return request.getfixturevalue("mongo_uri") if request.param == "mongodb" else None


@pytest.fixture
async def store(store_uri: str | None) -> AsyncIterator[Store]:
    from identity import store_settings  # identity imports this module

    opened = open_store(Settings(store=store_settings(store_uri)))
    await opened.start()
    yield opened
    await opened.close()


# Debian's chromium, driven by Playwright for Python; never a browser download.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium; skips without it, unless OLBPROXY_REQUIRE_BROWSER=1 (CI)."""
    missing = browser_missing()
    if missing is not None:
        if os.environ.get("OLBPROXY_REQUIRE_BROWSER") == "1":
            pytest.fail(missing + " and OLBPROXY_REQUIRE_BROWSER=1")
        pytest.skip(missing + "; set OLBPROXY_REQUIRE_BROWSER=1 to fail instead")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
