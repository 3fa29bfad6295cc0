"""Team day: the seed's Mac through a working day, placed round-robin and cache-aware.

    .venv/bin/python bench/run.py --only teamday [--check]

Thirty people chat with both models through olbproxy: twenty on ``gpt-oss:20b`` (three
instances), ten on ``gpt-oss:120b`` (two), each holding a few conversations of several
turns whose context grows to several thousand tokens. Half of them come through an
Open WebUI-like front-end whose long system prompt and ~25 KB tool list every one of
their conversations shares (and which asks for a title after each first turn); the
others bring their own system prompt or none. Scripts add unrelated one-turn requests.
Each person reads and types between turns (a think time), so the day is a closed loop:
the same work in both runs, finished sooner where it is served faster.

The instances are the simulator's cost model (olbproxy/simulator/costs.py: an M3 Ultra
running Ollama with OLLAMA_NUM_PARALLEL=2), all in one process so that it can tell a
cold load that happened while another instance had the model warm with a free slot.
Time is compressed by ``SCALE``: figures are given back in the Mac's seconds. The day
is run twice, on fresh instances and a fresh proxy each time: ``placement:
round_robin`` (the old behaviour), then ``cache_aware``. The gains measured are gains
against our cost model, not on a real Mac.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.backends import Backends, Profile
from bench.goals import Verdict
from bench.processes import BenchError, Child, free_port
from bench.proxy import Olbproxy, http

SCALE = 0.1  # wall seconds per modelled second: a 10x faster Mac
PARALLEL = 2  # OLLAMA_NUM_PARALLEL of every instance, and the groups' slots
NUM_CTX = 32768
SMALL, LARGE = "gpt-oss:20b", "gpt-oss:120b"
MODES = ("round_robin", "cache_aware")
SEED = 20260512


# -- the workload ------------------------------------------------------------------------

WORDS = """budget meeting release customer report deadline design review server latency
migration invoice contract schedule estimate feature bug deploy ticket roadmap summary draft
question answer example context policy quarter figure growth risk plan test data model query
index cache cluster backup network access token""".split()  # noqa: SIM905


def text(rng: random.Random, tokens: int) -> str:
    """About ``tokens`` tokens of prose (the cost model counts 4 bytes a token)."""
    out: list[str] = []
    size = 0
    while size < tokens * 4:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def front_end() -> tuple[str, list[dict[str, Any]]]:
    """The front-end's system prompt (~600 tokens) and tool list (~25 KB), shared."""
    rng = random.Random(SEED)
    system = "You are the team's assistant. " + text(rng, 600)
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": text(rng, 80),
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": text(rng, 20)},
                        "limit": {"type": "integer", "description": "how many results"},
                    },
                    "required": ["query"],
                },
            },
        }
        for i in range(36)
    ]
    return system, tools


@dataclass(frozen=True)
class Turn:
    content: str
    num_predict: int
    think: float  # modelled seconds the person reads and types before sending it


@dataclass(frozen=True)
class Person:
    name: str
    model: str
    front_end: bool  # comes through the Open WebUI-like front-end (shared prompt, tools)
    system: str  # own system prompt ("" for none; unused with the front-end)
    conversations: tuple[tuple[Turn, ...], ...]


@dataclass(frozen=True)
class OneOff:
    at: float  # modelled seconds into the day
    model: str
    content: str
    num_predict: int


def people(rng: random.Random) -> list[Person]:
    everyone = []
    for i in range(30):
        model = SMALL if i < 20 else LARGE
        conversations = []
        for _ in range(2):
            turns = [Turn(text(rng, rng.choice((200, 400, 800, 1500, 2500))), 500, 5.0)]
            for _ in range(rng.randint(4, 8)):
                tokens = rng.choice((40, 80, 150, 300, 600))
                turns.append(Turn(text(rng, tokens), rng.randint(200, 700), rng.uniform(20, 90)))
            conversations.append(tuple(turns))
        system = text(rng, rng.randint(100, 400)) if i % 4 == 1 else ""
        everyone.append(Person(f"person{i:02d}", model, i % 2 == 0, system, tuple(conversations)))
    return everyone


def one_offs(rng: random.Random, day: float) -> list[OneOff]:
    jobs: list[OneOff] = []
    for model, every in ((SMALL, 20.0), (LARGE, 60.0)):
        at = rng.uniform(0, every)
        while at < day:
            tokens = rng.choice((100, 300, 800, 1500))
            jobs.append(OneOff(at, model, text(rng, tokens), rng.randint(100, 300)))
            at += rng.expovariate(1 / every)
    return sorted(jobs, key=lambda j: j.at)


# -- one run -----------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request of the day, as the client saw it (modelled seconds)."""

    kind: str  # first, follow, title, one_off
    model: str
    ttft: float | None
    prompt_tokens: int = 0
    prefill: float = 0.0  # the instance's prompt_eval_duration
    error: str | None = None


@dataclass
class Run:
    """What one mode's day measured."""

    mode: str
    day_seconds: float = 0.0  # modelled seconds until the last person was done
    exchanges: list[Exchange] = field(default_factory=list)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> costs
    placements: dict[str, float] = field(default_factory=dict)  # reason -> count
    notes: list[str] = field(default_factory=list)

    def ttfts(self, kind: str, model: str | None = None) -> list[float]:
        return [
            e.ttft
            for e in self.exchanges
            if e.kind == kind and e.ttft is not None and (model is None or e.model == model)
        ]

    @property
    def errors(self) -> int:
        return sum(1 for e in self.exchanges if e.error)

    def total(self, key: str) -> float:
        return sum(float(i.get(key, 0.0)) for i in self.instances.values())

    def busy_ratio(self, labels: Sequence[str]) -> float:
        busy = [float(self.instances[label]["busy_seconds"]) for label in labels]
        return max(busy) / min(busy) if busy and min(busy) > 0 else float("inf")


class CostBackends(Backends):
    """The five instances of the seed's Mac: one simulator process, the cost model on."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.profile = Profile("teamday", tps=0, answer_tokens=8000)
        self.ports = [free_port() for _ in range(5)]
        argv = [
            sys.executable,
            "-m",
            "olbproxy.simulator",
            "--ports",
            ",".join(map(str, self.ports)),
            "--costs",
            "--parallel",
            str(PARALLEL),
            "--time-scale",
            f"{SCALE:g}",
            "--num-ctx",
            str(NUM_CTX),
            "--answer-tokens",
            "8000",
            "--any-host",
        ]
        self.children = [Child("sim-teamday", argv, log_dir, env=env)]
        try:
            for port in self.ports:
                self.children[0].wait_for_port(port)
        except BaseException:
            self.stop()
            raise

    def groups(self) -> dict[str, list[str]]:
        return {"20b": self.endpoints[:3], "120b": self.endpoints[3:]}


class TeamProxy(Olbproxy):
    """olbproxy serve with the seed's two groups, placing by ``mode``."""

    description = "olbproxy serve: auth (a front-end key), MongoDB store, seed's groups"

    def __init__(self, work: Path, env: dict[str, str], mode: str) -> None:
        super().__init__(work, env, slots=PARALLEL)
        self.mode = mode
        self.key: str | None = None

    def _settings(self, backends: Backends) -> dict[str, Any]:
        settings = super()._settings(backends)
        common = {
            "slots": PARALLEL,
            "queue_size": 4096,
            "placement": self.mode,
            "pin_options": {"num_ctx": NUM_CTX},
        }
        settings["groups"] = [
            {"name": "20b", "models": [SMALL], "endpoints": backends.endpoints[:3], **common},
            {"name": "120b", "models": [LARGE], "endpoints": backends.endpoints[3:], **common},
        ]
        for group in settings["groups"]:
            group["endpoints"] = [f"http://{e}" for e in group["endpoints"]]
        # Residency is polled with the health probes: as often, in modelled time, as
        # every 5 s on the Mac would be worth at this compression... but not absurdly often.
        settings["health"] = {"interval": 0.25, "timeout": 2.0}
        settings["placement"] = {"cold_load_seconds": 1.0 * SCALE, "refresh": 1.0}
        return settings

    def front_end_key(self) -> str | None:
        """A trusted front-end key, so that each person is a user of their own."""
        if self.store != "mongodb" or not self.auth:
            return None
        made = self._olbproxy(
            "key", "create", "bench", "--front-end", "--label", "teamday", "--config",
            str(self.config),
        )  # fmt: skip
        lines = made.stdout.split()
        return lines[0] if made.returncode == 0 and lines and lines[0].startswith("olb_") else None


class Day:
    """The client side of one day against one proxy (see the module docstring)."""

    def __init__(self, url: str, auth: dict[str, str], front_end_key: str | None) -> None:
        self.url = url
        self.auth = auth
        self.key = front_end_key
        self.system, self.tools = front_end()
        rng = random.Random(SEED)
        self.people = people(rng)
        self.one_offs = one_offs(rng, 1800.0)
        self.run = Run("")
        self.began = 0.0
        self.background: set[asyncio.Task[str]] = set()  # titles and one-offs under way

    def later(self, ask: Any) -> None:
        task = asyncio.create_task(ask)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def now(self) -> float:
        return (time.monotonic() - self.began) / SCALE

    def headers(self, person: str | None) -> dict[str, str]:
        if self.key is not None and person is not None:
            return {
                "Authorization": f"Bearer {self.key}",
                "X-OpenWebUI-User-Id": person,
                "X-OpenWebUI-User-Name": person,
            }
        return dict(self.auth)

    async def ask(
        self,
        session: aiohttp.ClientSession,
        person: str | None,
        kind: str,
        body: dict[str, Any],
    ) -> str:
        """One request; the answer's text. TTFT is to the first line of a stream."""
        sent = time.monotonic()
        exchange = Exchange(kind, body["model"], None)
        self.run.exchanges.append(exchange)
        content: list[str] = []
        try:
            async with session.post(
                self.url + "/api/chat", json=body, headers=self.headers(person)
            ) as resp:
                if resp.status != 200:
                    exchange.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return ""
                async for line in resp.content:
                    if not line.strip():
                        continue
                    if exchange.ttft is None:
                        exchange.ttft = (time.monotonic() - sent) / SCALE
                    chunk = json.loads(line)
                    if "error" in chunk:
                        exchange.error = str(chunk["error"])[:200]
                    message = chunk.get("message") or {}
                    content.append(str(message.get("content") or ""))
                    if chunk.get("done"):
                        exchange.prompt_tokens = int(chunk.get("prompt_eval_count") or 0)
                        spent = float(chunk.get("prompt_eval_duration") or 0) / 1e9
                        exchange.prefill = spent / SCALE
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            exchange.error = f"{exc.__class__.__name__}: {exc}"[:200]
        if body.get("stream") is False:
            exchange.ttft = None  # a non-streamed answer's first byte is its last
        return "".join(content)

    async def sleep(self, modelled: float) -> None:
        await asyncio.sleep(modelled * SCALE)

    async def person(self, session: aiohttp.ClientSession, person: Person, index: int) -> None:
        await self.sleep(index * 7.0)  # people arrive over the first few minutes
        for number, conversation in enumerate(person.conversations):
            messages: list[dict[str, Any]] = []
            if person.front_end:
                messages.append({"role": "system", "content": self.system})
            elif person.system:
                messages.append({"role": "system", "content": person.system})
            for turn_index, turn in enumerate(conversation):
                await self.sleep(turn.think)
                messages.append({"role": "user", "content": turn.content})
                body: dict[str, Any] = {
                    "model": person.model,
                    "messages": messages,
                    "stream": True,
                    "options": {"num_predict": turn.num_predict},
                }
                if person.front_end:
                    body["tools"] = self.tools
                kind = "first" if turn_index == 0 else "follow"
                answer = await self.ask(session, person.name, kind, body)
                messages = [*messages, {"role": "assistant", "content": answer}]
                if turn_index == 0 and person.front_end:
                    self.later(self.title(session, person, turn.content))
            if number + 1 < len(person.conversations):
                await self.sleep(random.Random(f"{person.name}{number}").uniform(60, 180))

    async def title(self, session: aiohttp.ClientSession, person: Person, first: str) -> str:
        prompt = "### Task:\nGenerate a concise, 3-5 word title for the chat.\n" + first
        body = {
            "model": person.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": False,
            "options": {"num_predict": 30},
        }
        return await self.ask(session, person.name, "title", body)

    async def scripts(self, session: aiohttp.ClientSession, done: asyncio.Event) -> None:
        for job in self.one_offs:
            delay = job.at - self.now()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay * SCALE):
                        await done.wait()
                except TimeoutError:
                    pass
            if done.is_set():
                return
            body = {
                "model": job.model,
                "messages": [{"role": "user", "content": job.content}],
                "stream": False,
                "options": {"num_predict": job.num_predict},
            }
            self.later(self.ask(session, None, "one_off", body))

    async def play(self) -> Run:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.began = time.monotonic()
            done = asyncio.Event()
            scripts = asyncio.create_task(self.scripts(session, done))
            await asyncio.gather(*(self.person(session, p, i) for i, p in enumerate(self.people)))
            self.run.day_seconds = self.now()
            done.set()
            await scripts
            # Titles and one-offs still under way finish before the counters are read.
            if self.background:
                await asyncio.wait(set(self.background), timeout=60)
        return self.run


def costs_of(backends: CostBackends) -> dict[str, dict[str, Any]]:
    found = {}
    for endpoint in backends.endpoints:
        status, body = http("GET", f"http://{endpoint}/simulator/costs")
        if status != 200:
            raise BenchError(f"the simulator on {endpoint} gave no costs ({status})")
        found[endpoint] = json.loads(body)
    return found


def placements_of(proxy: TeamProxy) -> dict[str, float]:
    _, body = http("GET", f"http://{proxy.addresses[0]}/metrics", token=proxy.token)
    counts: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("olbproxy_loads_ahead_total{"):
            counts["(loads ahead)"] = counts.get("(loads ahead)", 0.0) + float(line.split()[-1])
        if line.startswith("olbproxy_placements_total{"):
            labels, _, value = line.rpartition(" ")
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = counts.get(reason, 0.0) + float(value)
    return counts


def run_mode(mode: str, work: Path, env: dict[str, str]) -> Run:
    backends = CostBackends(work, env)
    proxy = TeamProxy(work, env, mode)
    try:
        proxy.start(backends)
        key = proxy.front_end_key()
        auth = {"Authorization": f"Bearer {proxy.token}"} if proxy.token else {}
        day = Day(f"http://{proxy.addresses[0]}", auth, key)
        run = asyncio.run(day.play())
        run.mode = mode
        if key is None:
            run.notes.append("no front-end key: every person counted as one user")
        run.notes.extend(proxy.notes)
        run.instances = costs_of(backends)
        run.placements = placements_of(proxy)
        return run
    finally:
        proxy.stop()
        proxy.close()
        backends.stop()


def run(work: Path, env: dict[str, str]) -> list[Run]:
    runs = []
    for mode in MODES:
        began = time.monotonic()
        print(f"bench: team day, placement {mode} ...", flush=True)
        # A directory of its own per mode: the main targets' SecantusDB may still hold
        # theirs (WiredTiger allows one server per directory).
        own = work / f"teamday-{mode}"
        own.mkdir(exist_ok=True)
        result = run_mode(mode, own, env)
        print(f"bench: team day, {mode}: {time.monotonic() - began:.0f} s, "
              f"{len(result.exchanges)} requests, {result.errors} errors", flush=True)  # fmt: skip
        runs.append(result)
    return runs


# -- the report --------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


KINDS = {
    "first": "first turns",
    "follow": "follow-up turns",
    "title": "title tasks",
    "one_off": "one-turn scripts",
}


def _groups(run: Run) -> dict[str, list[str]]:
    labels = list(run.instances)
    return {"20b": labels[:3], "120b": labels[3:]}


def rows(runs: Sequence[Run]) -> list[tuple[str, list[str], str]]:
    """(what, one cell per run, cache_aware against round_robin) for the table."""
    out: list[tuple[str, list[str], str]] = []

    def add(what: str, values: list[float], fmt: str, better: str = "lower") -> None:
        cells = [fmt.format(v) for v in values]
        ratio = ""
        if len(values) == 2 and values[1] and values[0] == values[0]:
            factor = values[0] / values[1] if better == "lower" else values[1] / values[0]
            ratio = f"{factor:.2f}x {'lower' if better == 'lower' else 'higher'}"
        out.append((what, cells, ratio))

    for model, title in ((None, "all"), (SMALL, "20b"), (LARGE, "120b")):
        follow = [r.ttfts("follow", model) for r in runs]
        add(f"follow-up TTFT p50, {title} (s)", [_pct(f, 0.5) for f in follow], "{:.2f}")
        add(f"follow-up TTFT p95, {title} (s)", [_pct(f, 0.95) for f in follow], "{:.2f}")
    firsts = [r.ttfts("first") for r in runs]
    add("first-turn TTFT p50 (s)", [_pct(f, 0.5) for f in firsts], "{:.2f}")
    add("first-turn TTFT p95 (s)", [_pct(f, 0.95) for f in firsts], "{:.2f}")
    add(
        "prefill on the instances (s)",
        [r.total("prefill_seconds") / SCALE for r in runs],
        "{:,.0f}",
    )
    for kind, title in KINDS.items():
        spent = [sum(e.prefill for e in r.exchanges if e.kind == kind) for r in runs]
        add(f"prefill of {title} (s)", spent, "{:,.0f}")
    add(
        "prompt tokens from cache",
        [r.total("cached_tokens") / max(r.total("prompt_tokens"), 1) * 100 for r in runs],
        "{:.0f} %",
        better="higher",
    )
    add("cold loads", [r.total("cold_loads") for r in runs], "{:.0f}")
    add(
        "cold loads while a warm instance had a free slot",
        [r.total("cold_loads_while_warm_free") for r in runs],
        "{:.0f}",
    )
    for group in ("20b", "120b"):
        add(
            f"busy time max/min, {group} instances",
            [r.busy_ratio(_groups(r)[group]) for r in runs],
            "{:.2f}",
        )
    out.append(
        (
            "busy time per instance (s)",
            [
                " / ".join(f"{float(i['busy_seconds']) / SCALE:,.0f}" for i in r.instances.values())
                for r in runs
            ],
            "",
        )
    )
    add("length of the day (s)", [r.day_seconds for r in runs], "{:,.0f}")
    out.append(("requests (errors)", [f"{len(r.exchanges)} ({r.errors})" for r in runs], ""))
    out.append(
        (
            "placements",
            [", ".join(f"{k} {v:.0f}" for k, v in sorted(r.placements.items())) for r in runs],
            "",
        )
    )
    return out


def markdown(runs: Sequence[Run]) -> list[str]:
    lines = [
        f"Team day (bench/teamday.py): 30 people on the seed's Mac, simulated by the cost "
        f"model at {1 / SCALE:g}x speed; times below are the Mac's (modelled) seconds. "
        "The gains are measured against our cost model, not on a real Mac.",
        "",
        "| | " + " | ".join(r.mode for r in runs) + " | cache_aware vs round_robin |",
        "|---|" + "---:|" * len(runs) + "---|",
    ]
    for what, cells, ratio in rows(runs):
        lines.append(f"| {what} | " + " | ".join(cells) + f" | {ratio} |")
    for r in runs:
        loads = [
            f"{label} at {at / SCALE:,.0f} s" + (" (a warm instance was free)" if free else "")
            for label, info in r.instances.items()
            for at, free in info.get("loads", ())
        ]
        lines.append(f"- {r.mode}: cold loads: " + "; ".join(loads))
        lines.extend(f"- {r.mode}: {note}" for note in r.notes)
    return lines


def goals(runs: Sequence[Run]) -> list[Verdict]:
    """Issue 12's goals for the team day (not measured when it did not run)."""
    by = {r.mode: r for r in runs}
    rr, ca = by.get("round_robin"), by.get("cache_aware")
    names = (
        "(teamday) p50 follow-up TTFT >= 3x lower",
        "(teamday) prefill seconds on the instances >= 2x lower",
        "(teamday) p95 follow-up TTFT no worse",
        "(teamday) busy time max/min between instances of a group <= 1.3",
        "(teamday) zero cold loads while a warm instance had a free slot",
        "(teamday) no failed requests",
    )
    if rr is None or ca is None:
        return [Verdict(name, "not measured", None) for name in names]
    p50 = _pct(rr.ttfts("follow"), 0.5) / _pct(ca.ttfts("follow"), 0.5)
    prefill = rr.total("prefill_seconds") / max(ca.total("prefill_seconds"), 1e-9)
    p95 = (_pct(ca.ttfts("follow"), 0.95), _pct(rr.ttfts("follow"), 0.95))
    ratios = {g: ca.busy_ratio(labels) for g, labels in _groups(ca).items()}
    worst = max(ratios.values())
    warm_free = ca.total("cold_loads_while_warm_free")
    errors = rr.errors + ca.errors
    return [
        Verdict(names[0], f"{p50:.2f}x", p50 >= 3.0),
        Verdict(names[1], f"{prefill:.2f}x", prefill >= 2.0),
        Verdict(names[2], f"{p95[0]:.2f} s vs {p95[1]:.2f} s", p95[0] <= p95[1]),
        Verdict(
            names[3],
            ", ".join(f"{g} {v:.2f}" for g, v in ratios.items()),
            worst <= 1.3,
        ),
        Verdict(names[4], f"{warm_free:.0f}", warm_free == 0),
        Verdict(names[5], f"{errors}", errors == 0),
    ]


def records(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """JSON lines for bench/results/: every run's figures, exchanges left out."""
    return [
        {"type": "teamday", **{k: v for k, v in asdict(r).items() if k != "exchanges"},
         "follow_ttft": r.ttfts("follow"), "first_ttft": r.ttfts("first")}
        for r in runs
    ]  # fmt: skip


def summary(values: Sequence[float]) -> str:
    return f"n={len(values)} mean={statistics.fmean(values):.2f}" if values else "n=0"
