"""The status at a glance: GET /api/olbproxy/status and ``olbproxy status``."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from conftest import Proxy, StartProxy, StartSims, group, make_settings
from identity import bearer, start_site

from olbproxy.app import EDGE, HEALTH, POOL, STATUS, create_app
from olbproxy.auth.principal import Principal
from olbproxy.cli import status
from olbproxy.simulator import OllamaSimulator
from olbproxy.status import PATH as STATUS_PATH

Seed = tuple[Proxy, list[OllamaSimulator], list[OllamaSimulator]]
CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def get_status(proxy: Proxy, **headers: str) -> dict[str, Any]:
    async with proxy.http.get(proxy.url + STATUS_PATH, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def until_down(proxy: Proxy, url: str) -> None:
    """A probe now instead of waiting for the next one: a refused connection is certain."""
    await proxy.app[HEALTH].probe_all()
    assert not proxy.app[POOL].backends[url].healthy


def by_label(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["label"]: b for g in data["groups"] for b in g["backends"]}


async def test_status_shows_groups_backends_health_and_loaded_models(seed: Seed) -> None:
    proxy, small, large = seed
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 200  # s1 loads gpt-oss:20b
    await large[1].stop()
    await until_down(proxy, large[1].url)

    data = await get_status(proxy)
    assert [g["name"] for g in data["groups"]] == ["20b", "120b"]
    g20, g120 = data["groups"]
    assert g20["models"] == ["gpt-oss:20b"]
    assert (g20["in_flight"], g20["slots"], g20["waiting"], g20["queue_size"]) == (0, 3, 0, 256)
    assert (g20["healthy"], g120["healthy"]) == (3, 1)
    backends = by_label(data)
    s1 = backends[small[0].url.removeprefix("http://")]
    assert s1["healthy"] is True
    assert s1["loaded"] == ["gpt-oss:20b"]
    assert s1["version"] == "0.12.6"
    assert backends[small[1].url.removeprefix("http://")]["loaded"] == []
    down = backends[large[1].url.removeprefix("http://")]
    assert down["healthy"] is False
    assert down["last_error"]
    assert set(data["persistence"]) == {"queue", "spool"}  # the recorder's backlog


async def test_status_counts_streams_in_flight(seed: Seed) -> None:
    proxy, small, _ = seed
    small[0].faults.stall_after_tokens = 1
    body = {**CHAT, "stream": True}
    resp = await proxy.http.post(proxy.url + "/api/chat", json=body)
    await resp.content.readline()
    data = await get_status(proxy)
    assert data["groups"][0]["in_flight"] == 1
    assert by_label(data)[small[0].url.removeprefix("http://")]["in_flight"] == 1
    resp.close()


async def test_status_reports_persistence_backlog_and_upstream_errors(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    proxy.app[STATUS].backlog = lambda: {"queue": 3, "spool": 12}
    sims[0].faults.busy = 1
    async with proxy.http.post(proxy.url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 200
    data = await get_status(proxy)
    assert data["persistence"] == {"queue": 3, "spool": 12}
    assert by_label(data)[sims[0].url.removeprefix("http://")]["errors"] == {"busy": 1}
    text = status.render(data)
    assert "persistence backlog: queue 3, spool 12" in text


async def test_status_is_for_admins(start_sims: StartSims, start_proxy: StartProxy) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims))
    app = await create_app(settings)

    async def as_user(request: web.Request) -> Principal:
        return Principal(id="u1", name="alice", role="user")

    app[EDGE].authenticate = as_user  # stands in for authentication
    proxy = await start_proxy(settings, app)
    async with proxy.http.get(proxy.url + STATUS_PATH) as resp:
        assert resp.status == 403
        assert "admins" in (await resp.json())["error"]


def render_sample() -> dict[str, Any]:
    backend = {
        "label": "127.0.0.1:11435",
        "healthy": True,
        "in_flight": 1,
        "slots": 1,
        "version": "0.12.6",
        "loaded": ["gpt-oss:20b"],
        "last_error": None,
    }
    down = {
        **backend,
        "label": "127.0.0.1:11436",
        "healthy": False,
        "in_flight": 0,
        "version": None,
        "loaded": [],
        "last_error": "probe failed: connection refused",
    }
    group = {
        "name": "20b",
        "models": ["gpt-oss:20b"],
        "in_flight": 1,
        "slots": 2,
        "healthy": 1,
        "waiting": 4,
        "queue_size": 256,
        "backends": [backend, down],
    }
    return {"groups": [group], "persistence": None}


def test_render_prints_a_table_with_every_backend() -> None:
    lines = status.render(render_sample()).splitlines()
    assert lines[0].split() == ["GROUP", "BACKEND", "HEALTH", "IN-FLIGHT", "QUEUE", "LOADED"]
    assert lines[1].split() == ["20b", "1/2", "up", "1/2", "4/256", "gpt-oss:20b"]
    assert lines[2].split() == ["127.0.0.1:11435", "up", "0.12.6", "1/1", "gpt-oss:20b"]
    assert lines[3].split() == ["127.0.0.1:11436", "DOWN", "0/1", "-"]
    assert lines[4].strip() == "last error: probe failed: connection refused"
    assert lines[5] == "persistence backlog: not reported (no recorder)"
    # Columns line up: the backend column starts at the same place on every row.
    assert lines[2].index("127.0.0.1") == lines[0].index("BACKEND")


def command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="olbproxy")
    status.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["status", *argv])


async def test_status_command_prints_the_table(
    seed: Seed, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy, small, _ = seed
    args = command("--url", proxy.url)
    # The command is synchronous (urllib): run it off the loop the proxy serves on.
    assert await asyncio.to_thread(args.func, args) == 0
    out = capsys.readouterr().out
    assert "20b" in out
    assert "120b" in out
    assert small[2].url.removeprefix("http://") in out

    args = command("--url", proxy.url, "--json")
    assert await asyncio.to_thread(args.func, args) == 0
    assert len(json.loads(capsys.readouterr().out)["groups"]) == 2


async def test_status_command_explains_an_unreachable_proxy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = command("--url", "http://127.0.0.1:9")
    assert await asyncio.to_thread(args.func, args) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_default_url_follows_the_config_listen() -> None:
    settings = make_settings()
    assert status.default_url(settings) == "http://127.0.0.1:0"
    assert status.default_url(replace(settings, listen_host="0.0.0.0", listen_port=11434)) == (
        "http://127.0.0.1:11434"
    )
    assert status.default_url(replace(settings, listen_host="::1", listen_port=5)) == (
        "http://[::1]:5"
    )


async def test_with_authentication_the_status_takes_an_admin_token(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    user = await site.user_with_token("alice")
    admin = await site.user_with_token("root", role="admin")
    http, url = site.proxy.http, site.url + STATUS_PATH
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, headers=bearer(user)) as resp:
        assert resp.status == 403
    async with http.get(url, headers=bearer(admin)) as resp:
        assert resp.status == 200
        assert [g["name"] for g in (await resp.json())["groups"]] == ["20b", "120b"]
    # The command line sends the token it is given.
    args = command("--url", site.url, "--token", admin)
    assert await asyncio.to_thread(args.func, args) == 0
    args = command("--url", site.url, "--token", user)
    assert await asyncio.to_thread(args.func, args) == 1
