"""The simulator's cost model: what a request costs an Ollama instance on a Mac, in time.

Off unless a simulator is given one (``Simulator(costs=CostModel(...))``, or
``python -m olbproxy.simulator --costs``); without it every answer is exactly what it
was before. With it, each simulator behaves like one ``ollama serve`` (0.30+, whose
runner is llama-server with ``cache_prompt``) on an M3 Ultra:

* **Runners** (runner.py). A model is loaded on first use (``ModelCosts.load`` seconds) and stays
  until its ``keep_alive`` runs out, as ``/api/ps`` shows (``expires_at``,
  ``context_length`` = the runner's ``num_ctx``). A request whose runner options
  (``num_ctx``, ``num_batch``, ...) differ from the loaded runner's waits until the
  runner is idle, then reloads it, caches and all. Runners are assigned one request at
  a time, as Ollama's scheduler does; ``load_duration`` is the time until the runner
  was assigned (waiting for someone else's load included).
* **Slots.** A runner has ``parallel`` slots (``OLLAMA_NUM_PARALLEL``); a request waits
  for a free one (inside ``total_duration`` only). Each slot keeps the tokens of its
  last prompt and answer; the free slot sharing the longest prefix with the new prompt
  is taken, else the least recently used one. What a slot loses goes to the runner's
  host-RAM cache (llama.cpp PR #16391; ``cache_ram_bytes``, least recently used out),
  from which a longer prefix is restored instead.
* **Tokens** (prompt.py). The prompt is rendered the way Ollama's template renders it (system,
  tools, then the messages in order, then the generation prompt), and every 4 bytes
  of the rendering count as one token: deterministic, and a follow-up turn shares the
  previous turn's prompt and answer. An answer with thinking diverges from its next
  turn's rendering after the previous prompt (templates drop earlier thinking), as
  with gpt-oss on a real server.
* **Time.** Prefill takes the uncached tokens at ``ModelCosts.prefill`` tokens/s,
  decoding ``ModelCosts.decode`` tokens/s. The final chunk reports
  ``prompt_eval_count`` = every prompt token, ``prompt_eval_duration`` = the uncached
  part's time only, ``load_duration`` = the load. ``time_scale`` compresses all of it
  (0.05: a modelled second lasts 50 ms) so that a benchmark of a team's day takes
  minutes; reported durations are the real, compressed ones.

What it leaves out: instances on one Mac share one GPU, so real prefills slow each
other down; here every instance computes alone, which understates what a saved
prefill is worth. Prompts longer than ``num_ctx`` are not truncated.

A ``Machine`` is shared by the simulators of one process: it answers whether, when a
model was loaded, another instance had it warm with a free slot, and
``GET /simulator/costs`` reports each instance's counters for the benchmark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator.answer import Encoder, Reply
from olbproxy.simulator.call import ModelCall, Timing
from olbproxy.simulator.playback import play_stream, play_whole
from olbproxy.simulator.prompt import BYTES_PER_TOKEN, render, rendered_answer, tokens
from olbproxy.simulator.runner import Runner, Slot, runner_options
from olbproxy.simulator.wire import DEFAULT_KEEP_ALIVE, reply

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel


# Tokens written together when they fall due within this many seconds: a compressed
# decode at thousands of tokens/s would otherwise cost a wake-up per token.
COALESCE = 0.01


@dataclass(frozen=True)
class ModelCosts:
    """What one model costs on the modelled machine (README: "assumed rates")."""

    prefill: float  # uncached prompt tokens per second
    decode: float  # generated tokens per second
    load: float  # seconds to load the model when it is not resident
    kv_bytes: int  # KV cache bytes per token: how many the host-RAM cache holds


# M3 Ultra (80-core GPU) figures; see the README for the measurements behind them.
DEFAULT_COSTS: Mapping[str, ModelCosts] = {
    "gpt-oss:20b": ModelCosts(prefill=2000.0, decode=115.0, load=4.0, kv_bytes=24 * 1024),
    "gpt-oss:120b": ModelCosts(prefill=1000.0, decode=60.0, load=14.0, kv_bytes=36 * 1024),
}


@dataclass(frozen=True)
class CostModel:
    """How the simulated machine behaves; the defaults are an M3 Ultra running Ollama."""

    models: Mapping[str, ModelCosts] = field(default_factory=lambda: dict(DEFAULT_COSTS))
    parallel: int = 1  # OLLAMA_NUM_PARALLEL: slots per loaded model
    time_scale: float = 1.0  # wall seconds per modelled second
    num_ctx: int = 4096  # OLLAMA_CONTEXT_LENGTH: a runner's context unless options say
    cache_ram_bytes: int = 8 * 1024**3  # llama-server's --cache-ram default (8 GiB)

    def of(self, model: str) -> ModelCosts:
        found = self.models.get(model)
        if found is not None:
            return found
        # Any other model costs what the smallest listed one does.
        return min(self.models.values(), key=lambda c: c.load)


@dataclass
class InstanceStats:
    """Counters of one instance, in wall seconds (divide by time_scale for the Mac's)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    load_seconds: float = 0.0
    cold_loads: int = 0
    cold_loads_while_warm_free: int = 0  # another instance had the model warm and a free slot
    reloads: int = 0  # cold loads caused by different runner options
    # When each cold load began (seconds since the instance started, wall), and whether
    # another instance had the model warm with a free slot then.
    loads: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def busy_seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds + self.load_seconds


class Machine:
    """The simulators of one process: one Mac's instances, for the cross-instance check."""

    def __init__(self) -> None:
        self.instances: list[Instance] = []

    def warm_elsewhere(self, me: Instance, model: str) -> bool:
        for other in self.instances:
            if other is me:
                continue
            runner = other.runners.get(model)
            if runner is not None and other.sim.is_loaded(model) and runner.has_free_slot():
                return True
        return False


class Instance:
    """The cost model's state for one simulator (see the module docstring)."""

    def __init__(self, sim: Simulator, model: CostModel, machine: Machine | None) -> None:
        self.sim = sim
        self.model = model
        self.machine = machine or Machine()
        self.machine.instances.append(self)
        self.runners: dict[str, Runner] = {}
        self.stats = InstanceStats()
        self.began = time.monotonic()
        self._scheduler = asyncio.Lock()

    def scaled(self, seconds: float) -> float:
        return seconds * self.model.time_scale

    def keep_alive(self, keep_alive: float | None) -> float:
        return self.scaled(DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive)

    # -- runners ----------------------------------------------------------------------

    async def runner(self, model: SimulatedModel, options: tuple[tuple[str, Any], ...]) -> Runner:
        """Assign the model's runner (loading or reloading it); counts as one user of it."""
        name = model.name
        async with self._scheduler:
            runner = self.runners.get(name)
            if runner is not None and not self.sim.is_loaded(name):
                del self.runners[name]  # keep_alive ran out (or an unload): caches gone
                runner = None
            if runner is not None and runner.options != options:
                await runner.idle.wait()  # Ollama reloads only once the runner is idle
                del self.runners[name]
                self.sim.loaded.pop(name, None)
                self.stats.reloads += 1
                runner = None
            if runner is None:
                runner = await self._load(model, options)
            runner.users += 1
            runner.idle.clear()
            self.sim.hold(name)
        return runner

    async def _load(self, model: SimulatedModel, options: tuple[tuple[str, Any], ...]) -> Runner:
        costs = self.model.of(model.name)
        self.stats.cold_loads += 1
        warm_free = self.machine.warm_elsewhere(self, model.name)
        self.stats.cold_loads_while_warm_free += warm_free
        self.stats.loads.append((round(time.monotonic() - self.began, 3), warm_free))
        seconds = self.scaled(costs.load)
        await asyncio.sleep(seconds)
        self.stats.load_seconds += seconds
        runner = Runner(
            options,
            [Slot() for _ in range(self.model.parallel)],
            costs.kv_bytes,
            self.model.cache_ram_bytes,
            free=asyncio.Semaphore(self.model.parallel),
        )
        self.runners[model.name] = runner
        self.sim.context_lengths[model.name] = runner.num_ctx
        return runner

    def options_of(self, options: object) -> tuple[tuple[str, Any], ...]:
        """The runner options a request with these ``options`` needs."""
        return runner_options({"options": options}, self.model.num_ctx)

    def leave(self, model: SimulatedModel, runner: Runner, keep_alive: float | None) -> None:
        runner.users -= 1
        if runner.users == 0:
            runner.idle.set()
        self.sim.release(model, keep_alive)

    # -- a model request ----------------------------------------------------------------

    async def deliver(
        self,
        request: web.Request,
        call: ModelCall,
        model: SimulatedModel,
        answer: Reply,
        encoder: Encoder,
        *,
        stream: bool,
        keep_alive: float | None,
        timing: Timing,
        cutoff: tuple[int | None, str],
    ) -> web.StreamResponse:
        body = await request.json()
        prompt = render(body if isinstance(body, dict) else {})
        costs = self.model.of(model.name)
        runner = await self.runner(model, runner_options(body, self.model.num_ctx))
        try:
            timing.loaded_ns = time.perf_counter_ns()
            async with runner.free:
                slot, cached = runner.take(prompt)
                completed = False
                try:
                    timing.slot_ns = time.perf_counter_ns()
                    all_tokens = tokens(len(prompt))
                    # llama.cpp evaluates at least the last token, even of a cached prompt.
                    fresh = max(1, all_tokens - cached // BYTES_PER_TOKEN)
                    prefill = self.scaled(fresh / costs.prefill)
                    await asyncio.sleep(prefill)
                    timing.first_ns = time.perf_counter_ns()
                    slot.content = prompt
                    self._count(all_tokens, all_tokens - fresh, prefill)
                    answer = dataclasses.replace(answer, prompt_eval_count=all_tokens)
                    tps = costs.decode / self.model.time_scale
                    began = time.perf_counter()
                    try:
                        if stream:
                            response = await play_stream(
                                request, call, answer, encoder, timing, cutoff, tps, COALESCE
                            )
                        else:
                            response = await play_whole(
                                request, call, answer, encoder, timing, cutoff, tps
                            )
                    finally:
                        self.stats.decode_seconds += time.perf_counter() - began
                    completed = call.outcome is None and call.tokens == len(answer.steps)
                    return response
                finally:
                    if completed:
                        slot.content = prompt + rendered_answer(answer)
                    slot.used_at = time.monotonic()
                    slot.busy = False
        finally:
            self.leave(model, runner, keep_alive)

    def _count(self, prompt_tokens: int, cached_tokens: int, prefill: float) -> None:
        stats = self.stats
        stats.requests += 1
        stats.prompt_tokens += prompt_tokens
        stats.cached_tokens += cached_tokens
        stats.prefill_seconds += prefill

    # -- GET /simulator/costs -------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "name": self.sim.name,
            "time_scale": self.model.time_scale,
            "parallel": self.model.parallel,
            **dataclasses.asdict(stats),
            "busy_seconds": stats.busy_seconds,
            "runners": {
                name: {
                    "options": dict(r.options),
                    "users": r.users,
                    "slots": [tokens(len(s.content)) for s in r.slots],
                    "ram_prompts": len(r.ram),
                    "ram_tokens": r.ram_tokens,
                }
                for name, r in self.runners.items()
            },
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return reply(self.report())
