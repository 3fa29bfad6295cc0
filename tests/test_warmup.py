"""Warm-up: models are loaded on start and when an instance comes back."""

from __future__ import annotations

import json
from functools import partial

from conftest import StartProxy, StartSims, group, make_settings

from olbproxy.app import POOL
from olbproxy.settings import GroupSettings
from olbproxy.simulator import RecordedRequest
from olbproxy.warmup import keep_alive_value, warm_models


def loads(requests: list[RecordedRequest]) -> list[dict[str, object]]:
    return [json.loads(r.body) for r in requests if r.path == "/api/generate"]


def test_keep_alive_numbers_are_sent_as_numbers() -> None:
    assert keep_alive_value("-1") == -1
    assert keep_alive_value("300") == 300
    assert keep_alive_value("30m") == "30m"


def test_only_literal_model_names_are_warmed() -> None:
    g = GroupSettings(name="g", models=("gpt-oss:20b", "*:7b", "qwen?"), endpoints=("http://x",))
    assert warm_models(g) == ["gpt-oss:20b"]


async def test_models_are_loaded_at_start_with_the_groups_keep_alive(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims, warmup=True, keep_alive="-1"))
    await start_proxy(settings)
    for sim in sims:
        await sim.wait_until(partial(sim.is_loaded, "gpt-oss:20b"))
        assert loads(sim.requests) == [
            {"model": "gpt-oss:20b", "prompt": "", "stream": False, "keep_alive": -1}
        ]


async def test_no_warm_up_unless_asked(start_sims: StartSims, start_proxy: StartProxy) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    async with proxy.http.get(proxy.url + "/api/version") as resp:
        assert resp.status == 200
    assert loads(sims[0].requests) == []


async def test_an_instance_that_comes_back_is_warmed_again(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims, warmup=True)))
    sim = sims[0]
    await sim.wait_until(lambda: sim.is_loaded("gpt-oss:20b"))
    port = int(sim.url.rsplit(":", 1)[1])
    await sim.stop()
    backend = proxy.app[POOL].backends[sim.url]
    from conftest import until

    await until(lambda: not backend.healthy)
    sim.requests.clear()
    sim.loaded.clear()
    await sim.start(port=port)
    await sim.wait_until(lambda: sim.is_loaded("gpt-oss:20b"))
    assert len(loads(sim.requests)) == 1
