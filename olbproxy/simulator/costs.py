"""The simulator's cost model: what a request costs an Ollama instance on a Mac, in time.

Off unless a simulator is given one (``Simulator(costs=CostModel(...))``, or
``python -m olbproxy.simulator --costs``); without it every answer is exactly what it
was before. With it, each simulator behaves like one ``ollama serve`` (0.30+, whose
runner is llama-server with ``cache_prompt``) on an M3 Ultra:

* **Runners.** A model is loaded on first use (``ModelCosts.load`` seconds) and stays
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
* **Tokens.** The prompt is rendered the way Ollama's template renders it (system,
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
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator.answer import Encoder, Reply
from olbproxy.simulator.call import ModelCall, Timing
from olbproxy.simulator.playback import play_stream, play_whole
from olbproxy.simulator.wire import DEFAULT_KEEP_ALIVE, reply

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel

BYTES_PER_TOKEN = 4
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
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


def tokens(size: int) -> int:
    return math.ceil(size / BYTES_PER_TOKEN)


def common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix (memcmp by binary search, no copies)."""
    n = min(len(a), len(b))
    view = memoryview(b)
    if a.startswith(view[:n]):
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a.startswith(view[:mid]):
            lo = mid
        else:
            hi = mid
    return lo


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return "".join(p for p in parts if isinstance(p, str))
    return "" if content is None else json.dumps(content, sort_keys=True)


def _calls(calls: Any) -> str:
    if not isinstance(calls, list) or not calls:
        return ""
    named = []
    for call in calls:
        spec = call.get("function") if isinstance(call, dict) else None
        spec = spec if isinstance(spec, dict) else (call if isinstance(call, dict) else {})
        arguments = spec.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments)
        named.append([spec.get("name"), arguments])
    return json.dumps(named, sort_keys=True, ensure_ascii=False)


def _turn(role: str, text: str) -> str:
    return f"<|start|>{role}<|message|>{text}<|end|>"


def render(body: Mapping[str, Any]) -> bytes:
    """The prompt as Ollama's (gpt-oss-like) template renders it, ending with the
    generation prompt; raw generate requests are their prompt as is."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) and body.get("raw"):
        return (prompt + _text(body.get("suffix"))).encode()
    think = body.get("think", body.get("reasoning_effort"))
    system = [_text(body.get("system", body.get("instructions")))]
    raw = body.get("messages", body.get("input"))
    messages: Sequence[Any] = [{"role": "user", "content": raw}] if isinstance(raw, str) else []
    if isinstance(raw, list):
        messages = [m for m in raw if isinstance(m, dict)]
    lead = 0
    while lead < len(messages) and str(messages[lead].get("role")).lower() in (
        "system",
        "developer",
    ):
        system.append(_text(messages[lead].get("content")))
        lead += 1
    parts = [_turn("system", f"Reasoning: {think}\n" + "\n".join(s for s in system if s))]
    tools = body.get("tools")
    if tools:
        parts.append(_turn("developer", "# Tools\n" + json.dumps(tools, sort_keys=True)))
    context = body.get("context")
    if isinstance(context, list) and context:
        parts.append(" ".join(str(t) for t in context))
    for message in messages[lead:]:
        role = str(message.get("role") or "user").lower()
        parts.append(_turn(role, _text(message.get("content")) + _calls(message.get("tool_calls"))))
    if isinstance(prompt, str):
        parts.append(_turn("user", prompt + _text(body.get("suffix"))))
    parts.append("<|start|>assistant")
    return "".join(parts).encode("utf-8", "surrogatepass")


def rendered_answer(answer: Reply) -> bytes:
    """What decoding the answer leaves in the slot after the generation prompt."""
    thinking = ""
    if answer.thinking:
        thinking = f"<|channel|>analysis<|message|>{answer.thinking}<|end|><|start|>assistant"
    calls = _calls([answer.tool_call.native()]) if answer.tool_call is not None else ""
    return f"{thinking}<|message|>{answer.content}{calls}<|end|>".encode()


def _options(body: Mapping[str, Any], default_ctx: int) -> tuple[tuple[str, Any], ...]:
    options = body.get("options")
    given = options if isinstance(options, dict) else {}
    values = {k: given[k] for k in RUNNER_OPTIONS if given.get(k) is not None}
    values.setdefault("num_ctx", default_ctx)
    return tuple(sorted(values.items()))


@dataclass
class Slot:
    content: bytes = b""
    used_at: float = 0.0
    busy: bool = False


@dataclass
class Runner:
    """One loaded model: its options, slots and host-RAM prompt cache."""

    options: tuple[tuple[str, Any], ...]
    slots: list[Slot]
    kv_bytes: int
    ram_limit: int
    ram: list[bytes] = field(default_factory=list)  # least recently used first
    users: int = 0  # requests assigned to it (waiting for a slot or running)
    free: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def num_ctx(self) -> int:
        return int(dict(self.options).get("num_ctx") or 0)

    @property
    def ram_tokens(self) -> int:
        return sum(tokens(len(c)) for c in self.ram)

    def has_free_slot(self) -> bool:
        return any(not s.busy for s in self.slots)

    def save(self, content: bytes) -> None:
        """Keep an evicted prompt in host RAM; prefixes of it are redundant now."""
        if not content:
            return
        self.ram = [c for c in self.ram if not content.startswith(c)]
        self.ram.append(content)
        while len(self.ram) > 1 and self.ram_tokens * self.kv_bytes > self.ram_limit:
            self.ram.pop(0)

    def take(self, prompt: bytes) -> tuple[Slot, int]:
        """A free slot for ``prompt`` and how many of its bytes are cached there."""
        free = [s for s in self.slots if not s.busy]
        shared = [(common_prefix(s.content, prompt), s) for s in free]
        best, slot = max(shared, key=lambda pair: (pair[0], -pair[1].used_at))
        if best == 0:
            slot = min(free, key=lambda s: s.used_at)
        slot.busy = True
        if best < len(slot.content):
            self.save(slot.content)  # about to be overwritten past the shared part
        from_ram = max(
            ((common_prefix(c, prompt), i) for i, c in enumerate(self.ram)), default=(0, -1)
        )
        if from_ram[0] > best:
            # Restored by copying: the cached prompt stays (most recently used), and
            # goes once a prompt extending it is saved in its place.
            entry = self.ram.pop(from_ram[1])
            self.ram.append(entry)
            slot.content = entry
            best = from_ram[0]
        return slot, best


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
        return _options({"options": options}, self.model.num_ctx)

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
        runner = await self.runner(model, _options(body, self.model.num_ctx))
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
