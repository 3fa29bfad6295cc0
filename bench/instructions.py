"""Instructions per small request, counted by callgrind: the (e) comparison without noise.

    .venv/bin/python -m bench.instructions [--targets minimal,proxy-norec,proxy]
                                           [--requests 1000] [--connections 8]

Scenario (e) times non-streaming requests/s against the minimal proxy, and on a shared
two-core machine the same code measured 0.61 to 0.89 x from one run to the next. Counting
the instructions a target's process executes per request does not depend on what else the
machine does (valgrind runs the process on a simulated CPU), so a change to the
per-request path can be judged by one run of this, in a minute or two per target.

Each target runs under ``valgrind --tool=callgrind`` with instrumentation off (about five
times slower than native) through start-up and a warm-up; then counting goes on for an
idle spell (the background loops: health checks, the placement feed, timers) and for
``--requests`` requests from ``--connections`` keep-alive connections, each answered with
10 unpaced tokens as in (e). The idle rate times the load's wall time is taken off the
load's count. Child processes (olbproxy's recording process) run natively and do not
count: this measures the relay's loop, which is what saturates in (e).

Instructions are not time (a cache miss costs more than an add), so the table is a guide
for changes; the requests/s in ``bench/run.py --only e`` stay the acceptance.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence

from bench.backends import Backends
from bench.load import body
from bench.processes import BenchError
from bench.proxy import Olbproxy, UnrecordedOlbproxy
from bench.scenarios import UNPACED
from bench.targets import Minimal, Target

TARGETS = {"minimal": Minimal, "proxy-norec": UnrecordedOlbproxy, "proxy": Olbproxy}
WARMUP = 200  # requests before counting: connections open, caches and specialisations warm
IDLE_SECONDS = 5.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/instructions.py", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--requests", type=int, default=1000, help="counted requests")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    return parser.parse_args(argv)


async def load(address: str, token: str | None, requests: int, connections: int) -> float:
    """Send ``requests`` non-streaming chats; the wall time they took."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = body(UNPACED.answer_tokens, stream=False)
    left = requests

    async def connection(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(f"http://{address}/api/chat", data=payload) as answer:
                data = await answer.read()
            if answer.status != 200 or b'"done":true' not in data:
                raise BenchError(f"{address} answered {answer.status}: {data[:200]!r}")

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as s:
        started = time.monotonic()
        await asyncio.gather(*(connection(s) for _ in range(connections)))
        return time.monotonic() - started


class Counter:
    """callgrind_control on one process: switch counting on, dump, read the dump's total."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.dumps = 0
        binary = shutil.which("callgrind_control")
        if binary is None:
            raise BenchError("callgrind_control not found (Debian's valgrind package)")
        self.binary = binary

    def control(self, *args: str) -> None:
        done = subprocess.run([self.binary, *args, str(self.pid)], capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip
        if done.returncode != 0 or "OK" not in done.stdout:
            raise BenchError(f"callgrind_control {' '.join(args)}: {done.stdout}{done.stderr}")

    def start(self) -> None:
        self.control("--instr=on")
        self.control("--zero")

    def dump(self) -> int:
        """Instructions counted since the last dump (a dump zeroes the counters)."""
        self.control("--dump")
        self.dumps += 1
        text = Path(f"{self.out}.{self.dumps}").read_text()
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        if found is None:
            raise BenchError(f"no total in callgrind's dump {self.out}.{self.dumps}")
        return int(found.group(1))


def measure(target: Target, backends: Backends, args: argparse.Namespace) -> dict[str, float]:
    out = target.work / f"callgrind-{target.name}.out"
    target.launcher = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no",
        f"--callgrind-out-file={out}", f"--log-file={target.work / 'valgrind.log'}",
    ]  # fmt: skip
    target.start_timeout = 300.0
    target.start(backends)
    try:
        token = getattr(target, "token", None)
        address = target.addresses[0]
        asyncio.run(load(address, token, WARMUP, args.connections))
        assert target.child is not None
        counter = Counter(target.child.pid, out)
        counter.start()
        time.sleep(IDLE_SECONDS)
        idle = counter.dump() / IDLE_SECONDS
        seconds = asyncio.run(load(address, token, args.requests, args.connections))
        loaded = counter.dump()
    finally:
        target.stop()
    per_request = (loaded - idle * seconds) / args.requests
    return {"per_request": per_request, "idle_per_second": idle, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench/instructions.py: valgrind is not installed (apt-get install valgrind)")
        return 2
    names = [n for n in args.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown targets: {unknown}; known: {', '.join(TARGETS)}")
        return 2
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    results: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="olbproxy-instr-") as tmp:
        work = Path(tmp)
        backends = Backends(UNPACED, work, env)
        try:
            for index, name in enumerate(names):
                print(f"{name}: under callgrind ({args.requests} requests) ...", flush=True)
                target_work = work / f"{index}-{name}"  # a name may come twice: noise
                target_work.mkdir()
                kind = TARGETS[name]
                target = kind(target_work, env) if kind is Minimal else kind(
                    target_work, env, slots=args.connections * 4)  # fmt: skip
                try:
                    r = measure(target, backends, args)
                finally:
                    target.close()
                results.append((name, r))
                idle = f"idle {r['idle_per_second']:,.0f}/s over {r['seconds']:.1f} s"
                print(f"  {r['per_request']:,.0f} instructions/request ({idle})")
        finally:
            backends.stop()
    base = next((r["per_request"] for name, r in results if name == "minimal"), None)
    print("\n| target | instructions per request | minimal / target |\n|---|---|---|")
    for name, r in results:
        ratio = f"{base / r['per_request']:.2f}" if base else "-"
        print(f"| {name} | {r['per_request']:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
