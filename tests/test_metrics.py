"""/metrics after a known load: exact counts, in-flight gauges that rise and fall,
tokens from the final chunks, and the access modes of the endpoint."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import Proxy, StartProxy, StartSims, group, make_settings
from identity import CHAT, Site, bearer, site_settings, start_site
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from olbproxy.app import EDGE, METRICS, create_app
from olbproxy.auth.principal import Principal
from olbproxy.exchange import Exchange, Outcome
from olbproxy.metrics import LAG_BUCKETS, QUEUE_BUCKETS, Metrics
from olbproxy.pool import Pool
from olbproxy.settings import MetricsSettings, Settings
from olbproxy.simulator import OllamaSimulator

MODEL = "gpt-oss:20b"


def chat(content: str, *, stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "stream": stream}


class Scrape:
    """One /metrics page, parsed; ``value`` sums the samples that carry the given labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and all(have.get(k) == v for k, v in labels.items())
        )

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [have for sample, have, _ in self.samples if sample == name]


async def scrape(proxy: Proxy, url: str | None = None) -> Scrape:
    async with proxy.http.get(url or proxy.url + "/metrics") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/plain"
        return Scrape(await resp.text())


async def poll(proxy: Proxy, until: Callable[[Scrape], bool], timeout: float = 5.0) -> Scrape:  # noqa: ASYNC109 (a deadline for polling, not an operation timeout)
    """Scrape until ``until`` holds: the proxy releases slots just after the backend ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        page = await scrape(proxy)
        if until(page):
            return page
        if loop.time() > deadline:
            raise AssertionError(f"metrics never reached the expected state:\n{page.text}")
        await asyncio.sleep(0.02)


async def test_known_load_gives_exact_counts_and_tokens_from_final_chunks(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    streams, non_streams, tokens = 6, 2, 7
    sims = await start_sims(2, tokens_per_second=0, answer_tokens=tokens)
    proxy = await start_proxy(make_settings(group("20b", (MODEL,), sims, slots=2)))

    async def one(i: int, stream: bool) -> dict[str, Any]:
        async with proxy.http.post(proxy.url + "/api/chat", json=chat(f"q{i}", stream=stream)) as r:
            assert r.status == 200
            lines = [json.loads(line) for line in (await r.read()).splitlines() if line]
        assert lines[-1]["done"] is True
        final: dict[str, Any] = lines[-1]
        return final

    finals = await asyncio.gather(
        *(one(i, True) for i in range(streams)), *(one(i, False) for i in range(non_streams))
    )
    total = streams + non_streams
    assert sum(f["eval_count"] for f in finals) == total * tokens

    page = await poll(proxy, lambda p: p.value("olbproxy_backend_in_flight") == 0)
    requests = "olbproxy_requests_total"
    assert page.value(requests) == total
    assert page.value(
        requests, endpoint="/api/chat", group="20b", status="200", outcome="done"
    ) == (total)
    # Round robin over two backends.
    for sim in sims:
        assert page.value(requests, backend=sim.url.removeprefix("http://")) == total / 2
    labels = {"group": "20b", "model": MODEL}
    # Time to first token is a streaming measure; the duration counts every answer.
    assert page.value("olbproxy_time_to_first_token_seconds_count", **labels) == streams
    assert page.value("olbproxy_request_duration_seconds_count", **labels) == total
    assert page.value("olbproxy_queue_wait_seconds_count", group="20b") == total
    assert page.value("olbproxy_generated_tokens_total", **labels) == total * tokens
    prompt = sum(f["prompt_eval_count"] for f in finals)
    assert prompt > 0
    assert page.value("olbproxy_prompt_tokens_total", **labels) == prompt
    throughput = "olbproxy_tokens_per_second_count"
    assert page.value(throughput, phase="generation", **labels) == total
    assert page.value(throughput, phase="prompt", **labels) == total
    assert page.value("olbproxy_model_load_seconds_count", **labels) == total
    assert page.value("olbproxy_cold_loads_total") == 0
    assert page.value("olbproxy_backend_slots") == 4
    assert page.value("olbproxy_backend_up") == 2
    assert page.value("olbproxy_queue_depth", group="20b") == 0
    assert page.value("olbproxy_queue_capacity", group="20b") == 256
    # No user ids or prompts as labels unless asked for.
    assert "user" not in page.text
    assert "q0" not in page.text


def active(sim: OllamaSimulator, count: int) -> bool:
    return sim.stats.active == count


async def test_in_flight_rises_with_open_streams_and_falls_when_they_end(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0, answer_tokens=5)
    for sim in sims:
        sim.faults.stall_after_tokens = 2  # two tokens, then silence until the client leaves
    proxy = await start_proxy(make_settings(group("20b", (MODEL,), sims, slots=2)))
    labels = [sim.url.removeprefix("http://") for sim in sims]

    async def open_stream(i: int) -> aiohttp.ClientResponse:
        resp = await proxy.http.post(proxy.url + "/api/chat", json=chat(f"s{i}", stream=True))
        assert resp.status == 200
        await resp.content.readline()  # the first token went through
        return resp

    opened = [asyncio.create_task(open_stream(i)) for i in range(4)]
    for sim in sims:
        await sim.wait_until(functools.partial(active, sim, 2))
    # A fifth stream finds every slot taken and waits in the group's queue.
    waiting = asyncio.create_task(open_stream(4))
    page = await poll(proxy, lambda p: p.value("olbproxy_queue_depth", group="20b") == 1)
    assert page.value("olbproxy_backend_in_flight", group="20b") == 4
    for label in labels:
        assert page.value("olbproxy_backend_in_flight", backend=label) == 2
    responses = await asyncio.gather(*opened)

    # The queued stream will run to its end; the four open ones are abandoned by their clients.
    for sim in sims:
        sim.faults.stall_after_tokens = None
    for resp in responses:
        resp.close()
    last = await waiting
    await last.read()
    last.close()

    def settled(p: Scrape) -> bool:
        return (
            p.value("olbproxy_backend_in_flight") == 0
            and p.value("olbproxy_requests_total", outcome="cancelled") == 4
            and p.value("olbproxy_requests_total", outcome="done") == 1
        )

    page = await poll(proxy, settled)
    assert page.value("olbproxy_queue_depth") == 0
    # The cancelled streams had their 200 already; the queue wait was measured for all five.
    assert page.value("olbproxy_requests_total", status="200", outcome="cancelled") == 4
    assert page.value("olbproxy_queue_wait_seconds_count") == 5
    assert page.value("olbproxy_time_to_first_token_seconds_count") == 1
    assert page.value("olbproxy_generated_tokens_total") == 5


async def test_cold_load_counted_from_load_duration(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0, cold_load_delay=0.3)
    settings = make_settings(group("20b", (MODEL,), sims))
    app = await create_app(settings)
    app[METRICS].cold_load_seconds = 0.2  # the simulator's cold load is short
    proxy = await start_proxy(settings, app)
    for i in range(3):
        async with proxy.http.post(proxy.url + "/api/chat", json=chat(f"c{i}", stream=False)) as r:
            assert r.status == 200
    page = await scrape(proxy)
    backend = sims[0].url.removeprefix("http://")
    labels = {"group": "20b", "backend": backend, "model": MODEL}
    assert page.value("olbproxy_cold_loads_total", **labels) == 1
    assert page.value("olbproxy_model_load_seconds_count", **labels) == 3
    assert page.value("olbproxy_model_load_seconds_sum", **labels) >= 0.3
    assert page.value("olbproxy_model_load_seconds_bucket", le="0.1", **labels) == 2


async def test_upstream_errors_and_failed_requests(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", (MODEL,), sims)))
    first, second = (sim.url.removeprefix("http://") for sim in sims)
    sims[0].faults.busy = 1  # Ollama's 503: the request moves to the other backend
    async with proxy.http.post(proxy.url + "/api/chat", json=chat("a", stream=False)) as r:
        assert r.status == 200
    for sim in sims:
        sim.faults.fail_before = "model runner has unexpectedly stopped"
    async with proxy.http.post(proxy.url + "/api/chat", json=chat("b", stream=False)) as r:
        assert r.status == 500
    # An unknown model is answered before any group is chosen: not a model request.
    async with proxy.http.post(
        proxy.url + "/api/chat", json={**chat("c", stream=False), "model": "nope"}
    ) as r:
        assert r.status == 404
    page = await scrape(proxy)
    assert page.value("olbproxy_upstream_errors_total", backend=first, kind="busy") == 1
    assert page.value("olbproxy_requests_total", backend=second, status="200") == 1
    assert page.value("olbproxy_requests_total", status="500", outcome="error") == 1
    assert page.value("olbproxy_requests_total") == 2
    # Failed answers stay out of the latency histograms and carry no model label.
    assert page.value("olbproxy_request_duration_seconds_count") == 1
    assert all("model" not in labels for labels in page.labelsets("olbproxy_requests_total"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_metrics(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, metrics=replace(MetricsSettings(), **changes))


async def test_open_metrics_are_public_and_listed_for_the_authenticator(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", (MODEL,), sims)))
    page = await scrape(proxy)
    assert page.value("olbproxy_backend_up") == 1
    async with proxy.http.post(proxy.url + "/metrics") as resp:
        assert resp.status == 405


async def role_from_header(request: web.Request) -> Principal:
    """Stands in for authentication: the test says who is asking."""
    if request.headers.get("X-Test-Role") == "admin":
        return Principal(id="root", name="root", role="admin")
    return Principal(id="u1", name="alice", role="user")


async def test_token_access_requires_an_admin(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = with_metrics(make_settings(group("20b", (MODEL,), sims)), access="token")
    app = await create_app(settings)
    app[EDGE].authenticate = role_from_header
    proxy = await start_proxy(settings, app)
    async with proxy.http.get(proxy.url + "/metrics", headers={"X-Test-Role": "user"}) as resp:
        assert resp.status == 403
        assert "admin" in (await resp.json())["error"]
    async with proxy.http.get(proxy.url + "/metrics", headers={"X-Test-Role": "admin"}) as resp:
        assert resp.status == 200
        assert "olbproxy_backend_up" in await resp.text()


async def test_separate_listener_serves_metrics_on_its_own_port(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    port = free_port()
    settings = with_metrics(make_settings(group("20b", (MODEL,), sims)), listen=f"127.0.0.1:{port}")
    proxy = await start_proxy(settings)
    page = await scrape(proxy, f"http://127.0.0.1:{port}/metrics")
    assert page.value("olbproxy_backend_up") == 1
    # The main listener has no /metrics of its own, and no backend is asked for one.
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 404
    assert not any(r.path == "/metrics" for r in sims[0].requests)


async def test_user_labels_only_when_enabled(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = with_metrics(make_settings(group("20b", (MODEL,), sims)), user_labels=True)
    proxy = await start_proxy(settings)
    async with proxy.http.post(proxy.url + "/api/chat", json=chat("u", stream=False)) as r:
        assert r.status == 200
    page = await scrape(proxy)
    assert page.value("olbproxy_requests_total", user="anonymous") == 1
    assert page.value("olbproxy_generated_tokens_total", user="anonymous") > 0


async def test_disabled_metrics_observe_nothing(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = with_metrics(make_settings(group("20b", (MODEL,), sims)), enabled=False)
    proxy = await start_proxy(settings)
    async with proxy.http.post(proxy.url + "/api/chat", json=chat("d", stream=False)) as r:
        assert r.status == 200
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        assert resp.status == 404


@pytest.mark.parametrize("source", ["auth", "backlog"])
async def test_optional_sources_are_read_at_scrape_time(
    start_sims: StartSims, start_proxy: StartProxy, source: str
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", (MODEL,), sims)))
    live = proxy.app[METRICS].live
    state: dict[str, float] = {}
    if source == "auth":
        live.auth_failures = lambda: {"bad_token": int(state.get("n", 0))}
        name, labels = "olbproxy_auth_failures_total", {"reason": "bad_token"}
    else:
        live.backlog = lambda: {"queue": state.get("n", 0), "spool": 0}
        name, labels = "olbproxy_persistence_backlog", {"stage": "queue"}
    assert (await scrape(proxy)).value(name, **labels) == 0
    state["n"] = 3
    assert (await scrape(proxy)).value(name, **labels) == 3


async def test_with_authentication_open_metrics_need_no_token_and_failures_are_counted(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    async with site.proxy.http.post(site.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 401
    page = await scrape(site.proxy)  # no credentials
    assert page.value("olbproxy_auth_failures_total", reason="missing") == 1


async def test_with_authentication_token_access_takes_an_admin_token(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    small, large = await start_sims(2, tokens_per_second=0)
    settings = with_metrics(site_settings(small, large, None), access="token")
    site = Site(await start_proxy(settings), small, large)
    user = await site.user_with_token("alice")
    admin = await site.user_with_token("root", role="admin")
    http, url = site.proxy.http, site.url + "/metrics"
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, headers=bearer(user)) as resp:
        assert resp.status == 403
    async with http.get(url, headers=bearer(admin)) as resp:
        assert resp.status == 200
        assert "olbproxy_backend_up" in await resp.text()


def waited(seconds: float, *, outcome: Outcome = "done") -> Exchange:
    """A finished exchange that waited ``seconds`` for its slot and took 0.75 s in all."""
    exchange = Exchange(endpoint="/api/chat", model=MODEL, group="20b", backend="b:1")
    exchange.attempts, exchange.queue_wait, exchange.status = 1, seconds, 200
    exchange.outcome = outcome
    exchange.t0, exchange.ended = 100.0, 100.75
    exchange.counters = {"eval_count": 5, "prompt_eval_count": -3}
    return exchange


def test_histograms_expose_cumulative_buckets_sum_and_count() -> None:
    metrics = Metrics(Settings().metrics, Pool(Settings()), {})
    # Unlabelled, the loop lag is on the page at zero before its first observation.
    empty = Scrape(generate_latest(metrics.registry).decode())
    assert empty.value("olbproxy_event_loop_lag_seconds_bucket", le="+Inf") == 0
    assert empty.labelsets("olbproxy_event_loop_lag_seconds_count") == [{}]

    # Below the first bound, on a bound (le is inclusive), between two, past the last.
    waits = [0.0, 0.001, 0.0011, 0.5, 0.5, 400.0]
    for seconds in waits:
        metrics.observe(waited(seconds))
    metrics.observe(waited(0.02, outcome="error"))  # failures wait too
    lags = [0.0001, 0.0005, 0.003, 2.0]
    for seconds in lags:
        metrics.observe_lag(seconds)
    page = Scrape(generate_latest(metrics.registry).decode())

    wait = "olbproxy_queue_wait_seconds"
    buckets = {
        have["le"]: value
        for name, have, value in page.samples
        if name == wait + "_bucket" and have["group"] == "20b"
    }
    assert buckets == {
        "0.001": 2, "0.01": 3, "0.05": 4, "0.1": 4, "0.5": 6, "1.0": 6, "2.0": 6,
        "5.0": 6, "10.0": 6, "30.0": 6, "60.0": 6, "120.0": 6, "300.0": 6, "+Inf": 7,
    }  # fmt: skip
    assert page.value(wait + "_count", group="20b") == 7
    assert page.value(wait + "_sum", group="20b") == pytest.approx(sum(waits) + 0.02)

    # The same values through prometheus_client's own histograms give the same samples.
    reference = CollectorRegistry()
    by_client = Histogram("q", "", ("group",), buckets=QUEUE_BUCKETS, registry=reference)
    lag_by_client = Histogram("l", "", buckets=LAG_BUCKETS, registry=reference)
    for seconds in [*waits, 0.02]:
        by_client.labels("20b").observe(seconds)
    for seconds in lags:
        lag_by_client.observe(seconds)
    expected = Scrape(generate_latest(reference).decode())
    for ours, theirs in ((wait, "q"), ("olbproxy_event_loop_lag_seconds", "l")):
        for suffix in ("_bucket", "_count", "_sum"):
            assert [(h, v) for n, h, v in page.samples if n == ours + suffix] == [
                (h, v) for n, h, v in expected.samples if n == theirs + suffix
            ], ours + suffix

    # Six complete answers: their durations, tokens, and no negative prompt count.
    labels = {"endpoint": "/api/chat", "group": "20b", "model": MODEL}
    assert page.value("olbproxy_request_duration_seconds_bucket", le="1.0", **labels) == 6
    assert page.value("olbproxy_request_duration_seconds_bucket", le="0.5", **labels) == 0
    assert page.value("olbproxy_generated_tokens_total", backend="b:1") == 30
    assert page.labelsets("olbproxy_prompt_tokens_total") == []
    assert page.value("olbproxy_requests_total", outcome="done") == 6
    assert page.value("olbproxy_requests_total", outcome="error") == 1
