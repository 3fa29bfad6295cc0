"""Model management: one backend for a shared model store, every backend for separate ones."""

from __future__ import annotations

import json

from conftest import StartProxy, StartSims, group, make_settings

from olbproxy.simulator import OllamaSimulator


def pulls(sim: OllamaSimulator) -> int:
    return sum(1 for r in sim.requests if r.path == "/api/pull")


async def test_separate_model_stores_get_the_pull_each_with_progress(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(3, tokens_per_second=0)
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), sims, model_store="separate"))
    )
    async with proxy.http.post(proxy.url + "/api/pull", json={"model": "gpt-oss:20b"}) as resp:
        assert resp.status == 200
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert [pulls(s) for s in sims] == [1, 1, 1]
    statuses = [line["status"] for line in lines]
    # One "success" at the very end: clients stop reading at the first one they see.
    assert statuses.count("success") == 1 and statuses[-1] == "success"
    assert [s for s in statuses if s.startswith("pull on ")] == [
        f"pull on {s.url.removeprefix('http://')} ({i}/3)" for i, s in enumerate(sims, 1)
    ]


async def test_separate_stores_stop_at_the_first_failing_backend(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), sims, model_store="separate"))
    )
    await sims[0].stop()
    async with proxy.http.post(proxy.url + "/api/pull", json={"model": "gpt-oss:20b"}) as resp:
        lines = [json.loads(line) for line in (await resp.read()).splitlines()]
    assert "error" in lines[-1] and pulls(sims[1]) == 0


async def test_shared_store_sends_the_pull_to_one_backend(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(3, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    body = {"model": "gpt-oss:20b", "stream": False}
    async with proxy.http.post(proxy.url + "/api/pull", json=body) as resp:
        assert await resp.json() == {"status": "success"}
    assert [pulls(s) for s in sims] == [1, 0, 0]


async def test_pulling_a_model_no_group_serves_says_where_to_add_it(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    async with proxy.http.post(proxy.url + "/api/pull", json={"model": "llama3"}) as resp:
        assert resp.status == 404
        assert "no group serves model 'llama3'" in (await resp.json())["error"]
