"""Load generators, each in a process of its own so it never shares a core's loop with a target.

* ``wrk`` with ``stream.lua`` for the big stream counts and the non-streaming requests/s
  (C, a few µs per token, so the load generator stays out of the way);
* this module's own aiohttp client (``python -m bench.load PLAN_JSON``) for what wrk
  cannot see: the time of each line, hence time to first token and the gaps between
  tokens, and for holding idle streams open. It also stands in for wrk when wrk is not
  installed (its CPU cost per token is then higher, and the report says so).

The client prints ``RESULT {json}`` as its last line. Every plan is bounded in time.
Answers count only inside the window ``[start, end]`` (``time.monotonic()`` seconds,
the same CLOCK_MONOTONIC the bench and ``stream.lua`` read).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import uvloop

from bench.processes import BenchError

Mode = Literal["streams", "whole", "ttft", "gaps", "hold"]

LUA = Path(__file__).resolve().parent / "stream.lua"
MODEL = "gpt-oss:20b"


@dataclass
class Plan:
    """What one load run does; serialised to JSON for the client process."""

    mode: Mode
    addresses: list[str]  # host:port; spread round-robin over streams (or wrk threads)
    connections: int = 1  # concurrent streams or connections (ttft: unused)
    tokens: int = 200  # num_predict asked for
    start: float = 0.0  # window, time.monotonic()
    end: float = 0.0
    stop: float = 0.0  # the load ends here, whatever happens
    rate: float = 0.0  # ttft: new streams per second (open loop)
    token: str | None = None  # bearer token, sent to every target
    stagger: bool = True  # streams: first streams of lengths spread over 1..tokens
    hold_timeout: float = 45.0  # hold: close everything after this long even if not told


@dataclass
class Outcome:
    """What a load run measured (fields unused by a mode stay at their defaults)."""

    window_tokens: int = 0
    window_answers: int = 0
    answers: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    ttft_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99, max, n
    gap_ms: dict[str, float] = field(default_factory=dict)
    schedule_lag_ms: float = 0.0  # ttft: how late the client started streams (p99)
    opened: int = 0  # hold: streams open with their first token
    tool: str = "aiohttp"


def body(tokens: int, *, stream: bool) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hello"}],
            "stream": stream,
            "options": {"num_predict": tokens},
        }
    ).encode()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] * 1000.0

    return {
        "n": n,
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": ordered[-1] * 1000.0,
    }


# -- wrk --------------------------------------------------------------------------------


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_command(plan: Plan, threads: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a wrk run for a ``streams`` or ``whole`` plan."""
    binary = wrk_binary()
    if binary is None:
        raise BenchError("wrk is not installed")
    threads = max(1, min(threads, plan.connections))
    duration = max(1, round(plan.stop - time.monotonic()))
    argv = [
        binary,
        f"-t{threads}",
        f"-c{plan.connections}",
        f"-d{duration}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        f"http://{plan.addresses[0]}/api/chat",
    ]
    env = {
        "BENCH_MODE": "stream" if plan.mode == "streams" else "whole",
        "BENCH_ADDRS": ",".join(plan.addresses),
        "BENCH_MODEL": MODEL,
        "BENCH_TOKENS": str(plan.tokens),
        "BENCH_STAGGER": "1" if plan.stagger else "0",
        "BENCH_CONNS": str(plan.connections // threads),
        "BENCH_THREADS": str(threads),
        "BENCH_START": repr(plan.start),
        "BENCH_END": repr(plan.end),
        "BENCH_AUTH": plan.token or "",
    }
    return argv, env


def parse_wrk(output: str) -> Outcome:
    line = next((x for x in reversed(output.splitlines()) if x.startswith("BENCH ")), None)
    if line is None:
        raise BenchError(f"wrk printed no BENCH line; its output ends with:\n{output[-2000:]}")
    raw: dict[str, int] = json.loads(line[len("BENCH ") :])
    kinds = {
        "status": raw["bad_status"],
        "truncated": raw["truncated"],
        "connect": raw["connect_errors"],
        "read": raw["read_errors"],
        "write": raw["write_errors"],
        "timeout": raw["timeouts"],
    }
    kinds = {k: v for k, v in kinds.items() if v}
    return Outcome(
        window_tokens=raw["window_tokens"],
        window_answers=raw["window_answers"],
        answers=raw["answers"],
        errors=sum(kinds.values()),
        error_kinds=kinds,
        tool="wrk",
    )


def parse_client(output: str) -> Outcome:
    line = next((x for x in reversed(output.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        raise BenchError(f"the load client printed no RESULT line; it ends with:\n{output[-2000:]}")
    return Outcome(**json.loads(line[len("RESULT ") :]))


# -- the aiohttp client (runs in its own process) -----------------------------------------


class Client:
    """Runs one plan; counts what arrives, line by line."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.outcome = Outcome()
        self.ttfts = array("d")
        self.gaps = array("d")
        self.lags = array("d")
        self.next_address = 0
        self.headers = {"Content-Type": "application/json"}
        if plan.token:
            self.headers["Authorization"] = f"Bearer {plan.token}"
        self.release = asyncio.Event()

    def url(self) -> str:
        address = self.plan.addresses[self.next_address % len(self.plan.addresses)]
        self.next_address += 1
        return f"http://{address}/api/chat"

    def error(self, kind: str) -> None:
        self.outcome.errors += 1
        self.outcome.error_kinds[kind] = self.outcome.error_kinds.get(kind, 0) + 1

    async def stream(self, session: Any, tokens: int, ready: asyncio.Event | None = None) -> None:
        """One streamed answer; lines are timed as their newline arrives."""
        import aiohttp

        plan, now = self.plan, time.monotonic
        started = now()
        first: float | None = None
        last = 0.0
        tail = b""
        outcome = self.outcome
        timed = plan.mode == "gaps"
        try:
            async with session.post(self.url(), data=body(tokens, stream=True)) as answer:
                if answer.status != 200:
                    await answer.read()
                    self.error(f"status {answer.status}")
                    return
                async for chunk in answer.content.iter_any():
                    arrived = now()
                    count = chunk.count(b"\n")
                    tail = (tail + chunk)[-1200:]
                    if not count:
                        continue
                    inside = plan.start <= arrived < plan.end
                    if first is None:
                        first = arrived
                        if plan.start <= started < plan.end:
                            self.ttfts.append(arrived - started)
                        if ready is not None:
                            ready.set()
                            await self.release.wait()
                            return
                    elif inside and timed:
                        self.gaps.append(arrived - last)
                    if inside:
                        if timed and count > 1:
                            # Lines that came in one read reached the client together.
                            self.gaps.extend(repeat(0.0, count - 1))
                        # Counted as they arrive: streams cut at the end count too.
                        outcome.window_tokens += count
                    last = arrived
        except (aiohttp.ClientError, OSError) as exc:
            self.error(type(exc).__name__)
            return
        finished = now()
        if plan.start <= finished < plan.end:
            outcome.window_tokens -= 1  # the final done line is not a token
        if b'"done":true' not in tail:
            self.error("truncated")
            return
        outcome.answers += 1
        if plan.start <= finished < plan.end:
            outcome.window_answers += 1

    async def whole(self, session: Any) -> None:
        import aiohttp

        try:
            async with session.post(self.url(), data=body(self.plan.tokens, stream=False)) as a:
                data = await a.read()
                status = a.status
        except (aiohttp.ClientError, OSError) as exc:
            self.error(type(exc).__name__)
            return
        if status != 200 or b'"done":true' not in data:
            self.error(f"status {status}" if status != 200 else "truncated")
            return
        self.outcome.answers += 1
        if self.plan.start <= time.monotonic() < self.plan.end:
            self.outcome.window_answers += 1

    async def connection(self, session: Any, index: int) -> None:
        """Closed loop: the next request as soon as the previous answer ended."""
        plan = self.plan
        first = True
        while time.monotonic() < plan.stop:
            if plan.mode == "whole":
                await self.whole(session)
                continue
            tokens = plan.tokens
            if first and plan.stagger:
                # First lengths spread evenly over 1..tokens: completions spread evenly too.
                tokens = max(1, math.ceil((index + 1) / plan.connections * plan.tokens))
            first = False
            await self.stream(session, tokens)

    async def open_loop(self, session: Any, tasks: set[asyncio.Task[None]]) -> None:
        plan = self.plan
        begin = time.monotonic()
        count = 0
        while True:
            due = begin + count / plan.rate
            if due >= plan.end:  # the streams started since then have the tail to finish
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.lags.append(-delay)
            task = asyncio.create_task(self.stream(session, plan.tokens))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            count += 1

    async def hold(self, session: Any) -> None:
        plan = self.plan
        readies = []
        tasks = []
        for index in range(plan.connections):
            ready = asyncio.Event()
            readies.append(ready)
            tasks.append(asyncio.create_task(self.stream(session, plan.tokens, ready)))
            if index % 100 == 99:
                await asyncio.sleep(0.02)  # about 5000 new streams/s: no accept storm
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(plan.hold_timeout / 2):
                await asyncio.gather(*(r.wait() for r in readies))
        self.outcome.opened = sum(r.is_set() for r in readies)
        print(f"READY {self.outcome.opened}", flush=True)
        # The bench writes a line (or closes stdin) when it has measured.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(plan.hold_timeout):
                await reader.readline()
        self.release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> Outcome:
        import aiohttp

        plan = self.plan
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=self.headers
        ) as session:
            if plan.mode == "hold":
                await self.hold(session)
            else:
                tasks: set[asyncio.Task[None]] = set()
                if plan.mode == "ttft":
                    await self.open_loop(session, tasks)
                else:
                    for index in range(plan.connections):
                        task = asyncio.create_task(self.connection(session, index))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        if index % 100 == 99:
                            await asyncio.sleep(0.02)
                remaining = plan.stop - time.monotonic()
                if tasks:
                    _, pending = await asyncio.wait(set(tasks), timeout=max(0.1, remaining))
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
        self.outcome.ttft_ms = percentiles(self.ttfts)
        self.outcome.gap_ms = percentiles(self.gaps)
        self.outcome.schedule_lag_ms = percentiles(self.lags).get("p99", 0.0)
        return self.outcome


def client_command(plan: Plan) -> list[str]:
    return [sys.executable, "-m", "bench.load", json.dumps(asdict(plan))]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.load PLAN_JSON (see bench/load.py)", file=sys.stderr)
        return 2
    plan = Plan(**json.loads(args[0]))
    outcome = uvloop.run(Client(plan).run())
    print("RESULT " + json.dumps(asdict(outcome)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
