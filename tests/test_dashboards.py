"""The Grafana dashboard, checked for real: a real Prometheus scrapes a running proxy
under simulated load, and every panel's query must parse and return data.

Needs Debian's ``prometheus`` package (``apt-get install -y --no-install-recommends
prometheus``). Without it the live check is skipped, unless OLBPROXY_REQUIRE_PROMETHEUS=1
(CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Proxy, StartProxy, StartSims, group, make_settings
from identity import PASSWORD, auth_settings, bearer
from prometheus_client.parser import text_string_to_metric_families

from olbproxy.app import AUTHENTICATOR, METRICS, create_app
from olbproxy.metrics import Metrics
from olbproxy.pool import Pool
from olbproxy.settings import Settings

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DASHBOARD = DASHBOARDS / "olbproxy.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# What Grafana would put in for its variables and macros.
VARIABLES = {"group": ".*", "model": ".*", "__rate_interval": "1m", "__interval": "15s"}
VARIABLES["__range"] = "5m"
METRIC_NAME = re.compile(r"\bolbproxy_[a-z_]+\b")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install -y --no-install-recommends prometheus)"
        if os.environ.get("OLBPROXY_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message + " and OLBPROXY_REQUIRE_PROMETHEUS=1")
        pytest.skip(message + "; set OLBPROXY_REQUIRE_PROMETHEUS=1 to fail instead")
    return path


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expression) of every target."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown variable ${name} in {expr}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def test_dashboard_is_importable_with_the_datasource_as_a_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "olbproxy"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    # Nothing tied to one Grafana: no data source uid but the variable.
    assert '"uid": "${DS_PROMETHEUS}"' in DASHBOARD.read_text()
    assert (
        len(
            re.findall(
                r'"uid": "(?!\$\{DS_PROMETHEUS\}|olbproxy|-- Grafana --)', DASHBOARD.read_text()
            )
        )
        == 0
    )


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(p["title"].lower() for p in panels(load_dashboard()))
    for wanted in (
        "in flight per backend",
        "per group",
        "requests by group",
        "upstream errors",
        "time to first token",
        "generation speed",
        "cold loads",
        "backend health",
        "persistence backlog",
        "placements by reason",
        "prompt evaluation: spent and saved",
        "event loop lag",
        "garbage collection",
    ):
        assert wanted in titles, wanted


def exposed_names() -> set[str]:
    """Every sample name the metrics module can expose (histograms with their suffixes)."""
    metrics = Metrics(Settings().metrics, Pool(Settings()), {})
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def test_every_metric_the_dashboard_uses_is_defined() -> None:
    used = {name for _, expr in queries(load_dashboard()) for name in METRIC_NAME.findall(expr)}
    assert used, "no queries found"
    assert used <= exposed_names(), used - exposed_names()


def test_prometheus_example_config_is_valid() -> None:
    promtool = require("promtool")
    done = subprocess.run(
        [promtool, "check", "config", str(DASHBOARDS / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the live check ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """A real Prometheus scraping the proxy every second, with throwaway storage."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: olbproxy\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = directory / "prometheus.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                stdout=log,
                stderr=log,
            )

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            async with asyncio.timeout(10):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with http.get(self.url + path, params=params) as resp:
            return await resp.json()

    async def query(self, http: aiohttp.ClientSession, expr: str) -> Any:
        return await self.get(http, "/api/v1/query", query=expr)

    async def until(
        self, http: aiohttp.ClientSession, expr: str, wanted: float, seconds: float = 20.0
    ) -> None:
        """Poll an instant query until its first value is ``wanted`` (with a deadline)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        last: Any = None
        while loop.time() < deadline:
            assert self.process is not None
            assert self.process.returncode is None, self.log.read_text()
            try:
                last = await self.query(http, expr)
            except aiohttp.ClientConnectionError:
                last = "not listening yet"
            except aiohttp.ContentTypeError:
                # Listening but still starting: a plain-text 503 "Service Unavailable".
                last = "not ready yet"
            else:
                result = last.get("data", {}).get("result", [])
                if result and float(result[0]["value"][1]) == wanted:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expr} never became {wanted}: {last}\n{self.log.read_text()}")


async def proxy_requests(proxy: Proxy) -> float:
    async with proxy.http.get(proxy.url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "olbproxy_requests_total"
    )


async def settle(proxy: Proxy, total: int) -> None:
    """The proxy observes an exchange when its handler ends: poll until all are counted."""
    async with asyncio.timeout(10):
        while True:
            if await proxy_requests(proxy) == total:
                return
            await asyncio.sleep(0.02)


def chat(model: str, *, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


async def drive(proxy: Proxy, small_first_busy: Any) -> int:
    """One wave of mixed load; returns how many model requests it made."""
    http, url = proxy.http, proxy.url
    small_first_busy.faults.busy = 1  # Ollama's 503 once: an upstream error, retried

    async def post(path: str, body: dict[str, Any], status: int = 200) -> None:
        async with http.post(url + path, json=body) as resp:
            assert resp.status == status, await resp.text()
            await resp.read()

    async def cancelled() -> None:
        resp = await http.post(url + "/api/chat", json=chat("gpt-oss:120b", stream=True))
        await resp.content.readline()
        resp.close()  # the client leaves mid-stream

    openai = {**chat("gpt-oss:20b", stream=True), "stream_options": {"include_usage": True}}
    jobs = [
        *(post("/api/chat", chat("gpt-oss:20b", stream=True)) for _ in range(6)),
        *(post("/api/generate", {"model": "gpt-oss:20b", "prompt": "x"}) for _ in range(2)),
        post("/v1/chat/completions", openai),
        *(post("/api/chat", chat("gpt-oss:120b", stream=True)) for _ in range(2)),
        cancelled(),
        post("/api/chat", chat("llama3", stream=False), status=404),  # the backend's 404
    ]
    await asyncio.gather(*jobs)
    return len(jobs)


async def test_every_panel_query_returns_data_from_a_real_prometheus(
    start_sims: StartSims, start_proxy: StartProxy, tmp_path: Path
) -> None:
    binary = require("prometheus")
    dashboard = load_dashboard()
    small = await start_sims(2, prefix="s", tokens_per_second=200, answer_tokens=8)
    large = await start_sims(
        1, prefix="l", tokens_per_second=25, answer_tokens=8, cold_load_delay=0.3
    )
    other = await start_sims(1, prefix="x", tokens_per_second=0)
    # Everything on as in production: authentication (its failures have panels) and
    # persistence (its backlog has a panel), in memory here.
    settings = make_settings(
        group("20b", ("gpt-oss:20b",), small),
        group("120b", ("gpt-oss:120b",), large),
        group("other", ("*",), other),
        auth=auth_settings(),
    )
    app = await create_app(settings)
    app[METRICS].cold_load_seconds = 0.25  # the simulator's cold load is short
    proxy = await start_proxy(settings, app)
    await app[AUTHENTICATOR].accounts.add_user("grafana", PASSWORD)
    async with proxy.http.post(
        proxy.url + "/api/auth/login", json={"username": "grafana", "password": PASSWORD}
    ) as resp:
        token = (await resp.json())["token"]
    async with proxy.http.get(proxy.url + "/api/tags", headers=bearer("forged")) as resp:
        assert resp.status == 401  # a real authentication failure for its panel
    await proxy.http.close()
    proxy.http = aiohttp.ClientSession(headers=bearer(token))

    prometheus = Prometheus(binary, tmp_path, proxy.url.removeprefix("http://"))
    if promtool := shutil.which("promtool"):
        done = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "config", str(prometheus.config)],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    await prometheus.start()
    try:
        http = proxy.http
        await prometheus.until(http, 'up{job="olbproxy"}', 1)
        # Two waves with a scrape between them, so that every rate has two points.
        total = 0
        for _ in range(2):
            total += await drive(proxy, small[0])
            await settle(proxy, total)
            await prometheus.until(http, "sum(olbproxy_requests_total)", total)

        # What the load did is in Prometheus.
        for expr, at_least in (
            ('sum(olbproxy_requests_total{outcome="cancelled"})', 2),
            ('sum(olbproxy_requests_total{status="404"})', 2),
            ('sum(olbproxy_upstream_errors_total{kind="busy"})', 2),
            ("sum(olbproxy_cold_loads_total)", 1),
        ):
            result = (await prometheus.query(http, expr))["data"]["result"]
            assert result, expr
            assert float(result[0]["value"][1]) >= at_least, (expr, result)

        names = set((await prometheus.get(http, "/api/v1/label/__name__/values"))["data"])
        failures = []
        for where, expr in queries(dashboard):
            missing = set(METRIC_NAME.findall(expr)) - names
            answer = await prometheus.query(http, substitute(expr))
            result = answer.get("data", {}).get("result", [])
            values = [float(r["value"][1]) for r in result]
            if missing:
                failures.append(f"{where}: no series named {sorted(missing)}")
            elif answer["status"] != "success":
                failures.append(f"{where}: {answer.get('error')}: {expr}")
            elif not any(math.isfinite(v) for v in values):
                failures.append(f"{where}: no data ({result}): {expr}")
        assert not failures, "\n".join(failures)

        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            selector, label = substitute(match.group(1)), match.group(2)
            answer = await prometheus.get(
                http, f"/api/v1/label/{label}/values", **{"match[]": selector}
            )
            assert answer["status"] == "success", answer
            assert answer["data"], (variable["name"], answer)
    finally:
        await prometheus.stop()
