"""Cache-aware placement end to end: a proxy in front of cost-model simulators (real sockets).

The simulators behave like Ollama on a Mac (costs.py), compressed in time: a modelled
second lasts ``SCALE`` of a real one. Every answer to an admin carries the
``X-Olbproxy-Placement`` header (on in these tests; auth is off, so everyone is one),
which names the reason and the backend; the simulators' own counters confirm it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from conftest import Proxy, StartProxy, StartSims, group, make_settings, until
from identity import Site, auth_settings, bearer, store_settings

from olbproxy.app import PLACEMENT_FEED, PLANNER, POOL, create_app
from olbproxy.prompt import prompt_of
from olbproxy.settings import PlacementSettings, Settings
from olbproxy.simulator import OllamaSimulator
from olbproxy.simulator.costs import CostModel, Machine, ModelCosts

M = "gpt-oss:20b"
SCALE = 0.05
COSTS = CostModel(
    models={M: ModelCosts(prefill=1000.0, decode=100.0, load=8.0, kv_bytes=24 * 1024)},
    time_scale=SCALE,
    num_ctx=65536,
)
HEADER = "X-Olbproxy-Placement"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def placement(**overrides: Any) -> PlacementSettings:
    values: dict[str, Any] = {"header": True, "cold_load_seconds": 1.0 * SCALE, "refresh": 0.1}
    return PlacementSettings(**{**values, **overrides})


@dataclass
class Answer:
    content: str
    final: dict[str, Any]
    reason: str  # from the header: why it went where it went ("" without the header)
    backend: str
    queued: float  # seconds it waited for a slot


@dataclass
class Bench:
    proxy: Proxy
    sims: list[OllamaSimulator]

    def sim(self, backend: str) -> OllamaSimulator:
        return next(s for s in self.sims if s.url.endswith(backend))

    def chats(self) -> list[int]:
        return [sum(1 for r in s.requests if r.path == "/api/chat") for s in self.sims]

    async def warm(self, *sims: OllamaSimulator) -> None:
        """Load the model on these simulators (directly) and wait until the proxy knows."""
        async with aiohttp.ClientSession() as http:
            for sim in sims:
                async with http.post(sim.url + "/api/generate", json={"model": M}) as resp:
                    assert resp.status == 200
        pool = self.proxy.app[POOL]
        await until(lambda: all(pool.backends[s.url].is_resident(M) for s in sims))


async def start_bench(
    start_sims: StartSims,
    start_proxy: StartProxy,
    count: int = 3,
    *,
    slots: int = 1,
    settings: Settings | None = None,
    **group_settings: Any,
) -> Bench:
    machine = Machine()
    sims = await start_sims(
        count, costs=replace(COSTS, parallel=slots), machine=machine, answer_tokens=100
    )
    if settings is None:
        settings = make_settings(
            group("20b", (M,), sims, slots=slots, **group_settings), placement=placement()
        )
    return Bench(await start_proxy(settings), sims)


def turns(*texts: str) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(texts)
    ]


async def chat(
    proxy: Proxy, messages: list[dict[str, str]], *, http: aiohttp.ClientSession | None = None
) -> Answer:
    body = {"model": M, "messages": messages, "stream": True}
    async with (http or proxy.http).post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 200, await resp.text()
        header = resp.headers.get(HEADER, "")
        lines = [json.loads(line) for line in (await resp.read()).splitlines() if line.strip()]
    fields = dict(part.strip().partition("=")[::2] for part in header.split(";")[1:])
    content = "".join(line["message"].get("content", "") for line in lines[:-1])
    reason = header.partition(";")[0]
    queued = float(fields.get("queued", "0s").rstrip("s"))
    return Answer(content, lines[-1], reason, fields.get("backend", ""), queued)


async def teach(bench: Bench) -> None:
    """A few exchanges long enough to time, so that every instance shows its rates."""
    for i in range(2 * len(bench.sims)):
        await chat(bench.proxy, turns(f"warm-up {i} " + "x " * 400))


async def test_follow_up_turns_land_on_the_instance_of_their_previous_turn(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    bench = await start_bench(start_sims, start_proxy)
    await bench.warm(*bench.sims)
    history = turns("Tell me about the sea. " * 300)  # ~1,700 tokens of history
    answer = await chat(bench.proxy, history)
    home = answer.backend
    assert answer.reason == "resident"
    for turn in range(3):
        # Unrelated traffic in between moves the round-robin cursor on.
        await chat(bench.proxy, turns(f"unrelated question {turn}"))
        history = [
            *history,
            {"role": "assistant", "content": answer.content},
            {"role": "user", "content": f"and then? ({turn})"},
        ]
        stats = bench.sim(home).costs.stats  # type: ignore[union-attr]
        cached_before = stats.cached_tokens
        answer = await chat(bench.proxy, history)
        assert (answer.reason, answer.backend) == ("sticky", home)
        # The instance itself confirms it: all but the new message came from its cache.
        cached = stats.cached_tokens - cached_before
        assert cached > answer.final["prompt_eval_count"] - 20, answer.final


async def test_unrelated_one_turn_requests_go_three_three_three(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    bench = await start_bench(start_sims, start_proxy)
    await bench.warm(*bench.sims)
    reasons = set()
    for i in range(9):
        answer = await chat(bench.proxy, turns(f"question {i}: " + "why " * (10 * i + 5)))
        reasons.add(answer.reason)
    assert bench.chats() == [3, 3, 3]
    assert reasons == {"resident"}


async def test_a_cold_instance_gets_no_request_while_a_warm_one_has_a_free_slot(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    bench = await start_bench(start_sims, start_proxy, slots=2)
    warm, *cold = bench.sims
    await bench.warm(warm)
    for i in range(4):
        await chat(bench.proxy, turns(f"one-off {i}"))
    pair = await asyncio.gather(*(chat(bench.proxy, turns(f"at once {i}")) for i in range(2)))
    assert {a.reason for a in pair} == {"resident"}
    assert bench.chats() == [6, 0, 0]
    assert all(s.costs is not None and s.costs.stats.cold_loads == 0 for s in cold)


async def test_a_busy_sticky_instance_is_left_when_waiting_costs_more_than_re_prefilling(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    bench = await start_bench(start_sims, start_proxy, count=2)
    await bench.warm(*bench.sims)
    await teach(bench)
    short = turns("a short conversation")
    first = await chat(bench.proxy, short)
    # Its next turn is asked for twice (a regenerated answer): the first of them keeps
    # the sticky instance busy for 2,000 tokens (20 modelled seconds).
    follow = [*short, {"role": "assistant", "content": first.content}]
    long_turn = {
        "model": M,
        "messages": [*follow, {"role": "user", "content": "write a long essay"}],
        "options": {"num_predict": 2000},
    }
    bench.sim(first.backend).answer_tokens = 2000
    async with bench.proxy.http.post(bench.proxy.url + "/api/chat", json=long_turn) as resp:
        assert resp.headers[HEADER].startswith("sticky; backend=" + first.backend)
        await resp.content.readline()  # it is answering now
        # Re-reading ~20 tokens elsewhere beats waiting for that essay.
        other = await chat(bench.proxy, [*follow, {"role": "user", "content": "short, please"}])
        assert other.reason == "fallback_busy" and other.backend != first.backend
        await resp.read()


async def test_a_busy_sticky_instance_is_kept_when_waiting_is_cheaper(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    bench = await start_bench(start_sims, start_proxy, count=2)
    await bench.warm(*bench.sims)
    await teach(bench)
    long = turns("Summarise this report. " + "The quarterly figures rose. " * 2500)  # ~17k tokens
    first = await chat(bench.proxy, long)
    follow = [*long, {"role": "assistant", "content": first.content}]
    ask = [*follow, {"role": "user", "content": "and the risks?"}]
    body = {"model": M, "messages": ask, "stream": True}
    async with bench.proxy.http.post(bench.proxy.url + "/api/chat", json=body) as resp:
        assert resp.headers[HEADER].startswith("sticky; backend=" + first.backend)
        await resp.content.readline()
        # A 100-token answer (1 s) ahead of it, against 17 s to re-read the report
        # elsewhere: it waits for the sticky instance.
        regenerated = await chat(bench.proxy, [*follow, {"role": "user", "content": "and more?"}])
        await resp.read()
    assert (regenerated.reason, regenerated.backend) == ("sticky", first.backend)
    assert regenerated.queued > 0  # it did wait for the slot


async def test_a_second_proxy_sharing_mongodb_places_a_continuation_like_the_first(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    sims = await start_sims(3, costs=COSTS, machine=Machine(), answer_tokens=50)
    proxies = []
    for name in ("first", "second"):
        store = store_settings(mongo_uri, spool_dir=f"var/spool-{name}")  # one per process
        settings = make_settings(group("20b", (M,), sims), store=store, placement=placement())
        proxies.append(await start_proxy(settings))
    first, second = proxies
    bench = Bench(first, sims)
    await bench.warm(*sims)
    await until(lambda: all(second.app[POOL].backends[s.url].is_resident(M) for s in sims))
    await chat(first, turns("an unrelated question"))  # to the first instance
    history = turns("Let us plan the trip. " * 100)
    turn = await chat(first, history)
    assert turn.backend == sims[1].url.removeprefix("http://")
    # The first proxy records where the turn ran; the second reads it within a refresh.
    key = prompt_of("/api/chat", M, {"model": M, "messages": history})
    assert key is not None
    planner = second.app[PLANNER]
    async with asyncio.timeout(10):
        while not planner.index.served(key.key):  # noqa: ASYNC110  (a background feed)
            await asyncio.sleep(0.05)
    assert second.app[PLACEMENT_FEED].read >= 1
    follow = [*history, {"role": "assistant", "content": turn.content}, *turns("next?")]
    answer = await chat(second, follow)
    # The second proxy never saw this conversation: left alone, it would start at the
    # first instance (round-robin among warm ones); it goes where the turn ran.
    assert (answer.reason, answer.backend) == ("sticky", turn.backend)


async def test_a_pinned_num_ctx_keeps_one_clients_value_from_reloading_the_model(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    bench = await start_bench(start_sims, start_proxy, count=1, pin_options=(("num_ctx", 65536),))
    await bench.warm(*bench.sims)
    body = {"model": M, "messages": turns("hi"), "stream": False, "options": {"num_ctx": 2048}}
    async with bench.proxy.http.post(bench.proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 200
    (sim,) = bench.sims
    sent = json.loads(next(r.body for r in sim.requests if r.path == "/api/chat"))
    assert sent["options"] == {"num_ctx": 65536}
    assert sim.costs is not None and sim.costs.stats.reloads == 0


async def test_decisions_are_counted_recorded_and_shown_to_admins_only(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, costs=COSTS, machine=Machine(), answer_tokens=20)
    settings = make_settings(group("20b", (M,), sims), placement=placement(), auth=auth_settings())
    site = Site(await start_proxy(settings), sims[0], sims[1])
    admin = await site.user_with_token("root", role="admin")
    user = await site.user_with_token("kim")
    await Bench(site.proxy, sims).warm(*sims)
    async with aiohttp.ClientSession(headers=bearer(admin)) as http:
        first = await chat(site.proxy, turns("hello there"), http=http)
        again = await chat(site.proxy, turns("hello there", first.content, "go on"), http=http)
        metrics = await (await http.get(site.url + "/metrics")).text()

        async def placements() -> list[str | None]:
            rooms = await (await http.get(site.url + "/api/rooms")).json()
            if not rooms["rooms"] or rooms["rooms"][0]["turns"] < 2:
                return []
            room = rooms["rooms"][0]["id"]
            page = await (await http.get(f"{site.url}/api/rooms/{room}/messages")).json()
            return [m["placement"] for m in page["messages"]]

        async with asyncio.timeout(10):
            while not (kept := await placements()):  # noqa: ASYNC110  (the writer lingers)
                await asyncio.sleep(0.05)
    assert (first.reason, again.reason) == ("resident", "sticky")
    assert kept == ["resident", "sticky"]  # the records keep the reasons
    async with aiohttp.ClientSession(headers=bearer(user)) as http:
        hidden = await chat(site.proxy, turns("a user's question"), http=http)
    assert (hidden.reason, hidden.backend) == ("", "")  # not an admin: no header
    assert 'olbproxy_placements_total{group="20b",reason="sticky"} 1.0' in metrics
    assert 'olbproxy_learned_tokens_per_second{backend="' in metrics
    assert 'olbproxy_prefill_seconds_total{backend="' in metrics
    # The room keeps where its latest turn ran (what a restarted proxy reads back).
    (served,) = [s for _, s in await site.store.rooms.placements(EPOCH, limit=10)]
    assert served.backend == again.backend
    # Signed by this proxy, whose feed does not read it back (its planner knows it).
    feed = site.proxy.app[PLACEMENT_FEED]
    assert served.by is not None and served.by == feed.instance
    assert await feed.load() == 0


async def test_the_header_is_off_by_default(start_sims: StartSims, start_proxy: StartProxy) -> None:
    sims = await start_sims(1, costs=COSTS, answer_tokens=5)
    settings = make_settings(group("20b", (M,), sims))
    proxy = await start_proxy(settings, await create_app(settings))
    answer = await chat(proxy, turns("hi"))
    assert answer.reason == ""
