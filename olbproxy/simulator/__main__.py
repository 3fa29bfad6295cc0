"""``python -m olbproxy.simulator``: simulated Ollama backends in a process of their own.

The benchmark runs them this way so that the backends do not share the proxy's cores::

    python -m olbproxy.simulator --ports 11435,11436 --tps 40 --answer-tokens 200

With ``--costs`` the backends follow the cost model of costs.py (an M3 Ultra running
Ollama: loads, slots, prompt caches, prefill and decode rates), sharing one machine::

    python -m olbproxy.simulator --ports 11435,11436,11437 --costs --parallel 2 \
        --time-scale 0.05 --rate gpt-oss:120b=1000,60,14
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence

from olbproxy.simulator.costs import DEFAULT_COSTS, CostModel, Machine, ModelCosts
from olbproxy.simulator.server import OllamaSimulator


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m olbproxy.simulator",
        description="Serve simulated Ollama backends until SIGINT/SIGTERM.",
    )
    parser.add_argument("--ports", default="11435", help="comma-separated ports, one per backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tps", type=float, default=50.0, help="tokens per second (0: no pacing)")
    parser.add_argument("--answer-tokens", type=int, default=12)
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--cold-load-delay", type=float, default=0.0, help="seconds")
    parser.add_argument("--name-prefix", default="sim", help="backend names are PREFIX-PORT")
    parser.add_argument("--version", default="0.12.6", help="what /api/version reports")
    parser.add_argument("--any-host", action="store_true", help="skip the Host header check")
    parser.add_argument("--record", action="store_true", help="keep every request in memory")
    costs = parser.add_argument_group("cost model (off unless --costs)")
    costs.add_argument("--costs", action="store_true", help="simulate loads, caches and rates")
    costs.add_argument("--parallel", type=int, default=1, help="OLLAMA_NUM_PARALLEL")
    costs.add_argument(
        "--time-scale", type=float, default=1.0, help="wall seconds per modelled second"
    )
    costs.add_argument("--num-ctx", type=int, default=4096, help="OLLAMA_CONTEXT_LENGTH")
    costs.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="MODEL=PREFILL,DECODE,LOAD",
        help="tokens/s, tokens/s, seconds for one model (repeatable)",
    )
    return parser.parse_args(argv)


def cost_model(args: argparse.Namespace) -> CostModel | None:
    if not args.costs:
        return None
    models = dict(DEFAULT_COSTS)
    for item in args.rate:
        name, _, figures = str(item).partition("=")
        try:
            prefill, decode, load = (float(x) for x in figures.split(","))
        except ValueError:
            raise SystemExit(f"--rate {item!r}: expected MODEL=PREFILL,DECODE,LOAD") from None
        kv = models.get(name, DEFAULT_COSTS["gpt-oss:20b"]).kv_bytes
        models[name] = ModelCosts(prefill, decode, load, kv)
    if args.time_scale <= 0 or args.parallel < 1:
        raise SystemExit("--time-scale must be positive and --parallel at least 1")
    return CostModel(
        models=models, parallel=args.parallel, time_scale=args.time_scale, num_ctx=args.num_ctx
    )


async def _serve(args: argparse.Namespace) -> None:
    ports = [int(p) for p in str(args.ports).split(",") if p.strip()]
    sims = []
    costs = cost_model(args)
    machine = Machine()  # the backends of one process are one Mac's instances
    for port in ports:
        sim = OllamaSimulator(
            name=f"{args.name_prefix}-{port}",
            tokens_per_second=args.tps,
            first_token_delay=args.first_token_delay,
            cold_load_delay=args.cold_load_delay,
            answer_tokens=args.answer_tokens,
            version=args.version,
            enforce_host=not args.any_host,
            costs=costs,
            machine=machine,
        )
        sim.record_requests = args.record
        sims.append(sim)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(signum, stop.set)
    try:
        for sim, port in zip(sims, ports, strict=True):
            url = await sim.start(args.host, port)
            print(f"listening {url}", flush=True)
        await stop.wait()
    finally:
        for sim in sims:
            await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
