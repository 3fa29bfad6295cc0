"""Health probes: what each kind of answer does to a backend's state.

Answers come from a small real server whose /api/version the test sets; the failures
that are awkward to get from a real server on cue (a timeout, a refused connection) are
raised by aioresponses. (aioresponses 0.7.9 cannot build responses for aiohttp 3.14, whose
ClientResponse wants a stream writer, so it only raises here.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses

from olbproxy.health import HealthChecker
from olbproxy.pool import Backend, Pool
from olbproxy.settings import GroupSettings, HealthSettings, Settings
from olbproxy.upstream import Upstream


@dataclass
class Probed:
    health: HealthChecker
    backend: Backend
    changed: list[Backend]
    answers: list[web.Response] = field(default_factory=list)


@pytest.fixture
async def probed() -> AsyncIterator[Probed]:
    answers: list[web.Response] = []

    async def version(request: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/api/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pool = Pool(Settings(groups=(GroupSettings(name="g", models=("m",), endpoints=(url,)),)))
    changed: list[Backend] = []
    async with aiohttp.ClientSession() as session:
        upstream = Upstream(session)
        health = HealthChecker(pool, upstream, HealthSettings(fail_threshold=2), changed.append)
        yield Probed(health, pool.backends[url], changed, answers)
    await runner.cleanup()


async def test_a_healthy_answer_records_the_version(probed: Probed) -> None:
    probed.answers.append(web.json_response({"version": "0.12.6"}))
    await probed.health.probe(probed.backend)
    assert probed.backend.healthy and probed.backend.version == "0.12.6"
    assert probed.changed == []


async def test_failures_take_it_out_after_the_threshold_and_an_answer_brings_it_back(
    probed: Probed,
) -> None:
    backend = probed.backend
    probed.answers += [
        web.Response(status=500, text="oops"),
        web.Response(text="<html>not ollama</html>", content_type="text/html"),
        web.json_response({"version": "0.13.0"}),
    ]
    await probed.health.probe(backend)
    assert backend.healthy  # one failure is not enough
    await probed.health.probe(backend)
    # Read as a plain bool: mypy keeps `backend.healthy` narrowed to True across the probe.
    healthy: bool = backend.healthy
    assert not healthy and probed.changed == [backend]
    await probed.health.probe(backend)
    assert backend.healthy and backend.failures == 0 and backend.version == "0.13.0"
    assert probed.changed == [backend, backend]


async def test_a_refused_connection_takes_it_out_at_once(probed: Probed) -> None:
    key = ConnectionKey("127.0.0.1", 1, False, True, None, None, None, None)
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    with aioresponses() as mocked:
        mocked.get(probed.backend.url + "/api/version", exception=refused)
        await probed.health.probe(probed.backend)
    assert not probed.backend.healthy and "refused" in str(probed.backend.last_error)


async def test_timeouts_count_toward_the_threshold(probed: Probed) -> None:
    with aioresponses() as mocked:
        mocked.get(probed.backend.url + "/api/version", exception=TimeoutError(), repeat=True)
        await probed.health.probe(probed.backend)
        assert probed.backend.healthy
        await probed.health.probe(probed.backend)
    healthy: bool = probed.backend.healthy  # as above: the probe changed it
    assert not healthy and "no answer in time" in str(probed.backend.last_error)
