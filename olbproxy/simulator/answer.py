"""What a simulated model answers, and how the answer reaches the client.

A :class:`Reply` is decided before the first token: a deterministic list of steps
(thinking tokens, content tokens or one tool call), each token already JSON-encoded so a
chunk costs a few byte concatenations. :func:`deliver` then plays it like Ollama does: the
``busy``/``fail_before``/``hang`` faults, the (cold) model load, the first-token delay, then
one chunk per token on an absolute schedule ``t0 + i / tokens_per_second`` (no drift), and
the final chunk with real timings. The response is prepared only when its first chunk is
due, because gin sends headers with the first write. An :class:`Encoder` supplies the bytes
of one API family (native NDJSON, OpenAI SSE, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from aiohttp import web

from olbproxy.simulator.wire import RUNNER_STOPPED, go_json

if TYPE_CHECKING:
    from olbproxy.simulator.models import Faults, SimulatedModel, SimulatorStats

THINKING, CONTENT, TOOL = 0, 1, 2
THINKING_TOKENS = 3


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The one tool call a simulated model makes (``call:`` prompts with ``tools``)."""

    id: str
    name: str
    arguments: dict[str, Any]

    def native(self) -> dict[str, Any]:
        function = {"index": 0, "name": self.name, "arguments": self.arguments}
        return {"id": self.id, "function": function}

    def openai(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": go_json(self.arguments).decode()}
        return {"id": self.id, "index": 0, "type": "function", "function": function}


@dataclass(slots=True)
class Reply:
    """The whole answer, decided up front; ``steps`` are (kind, JSON-encoded token)."""

    steps: list[tuple[int, bytes]]
    thinking: str
    content: str
    tool_call: ToolCall | None
    done_reason: str
    prompt_eval_count: int


def words(text: str) -> int:
    return len(text.split())


def _num_predict(options: object) -> int | None:
    value = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None  # absent, or -1/-2: until the model stops
    return int(value)


def _first_tool_name(tools: list[Any]) -> str:
    first = tools[0] if isinstance(tools[0], dict) else {}
    function = first.get("function")
    name = function.get("name") if isinstance(function, dict) else first.get("name")
    return name if isinstance(name, str) and name else "tool"


def compose(
    sim_name: str,
    said: str,
    prompt_eval_count: int,
    *,
    answer_tokens: int,
    options: object = None,
    think: bool | str | None = None,
    tools: list[Any] | None = None,
) -> Reply:
    """Words of ``[name] You said: <said>`` cycled to the answer length, one per token."""
    steps: list[tuple[int, bytes]] = []
    thinking = ""
    if think:
        for word in f"[{sim_name}] is thinking".split()[:THINKING_TOKENS]:
            steps.append((THINKING, go_json(word + " ")))
            thinking += word + " "
    if tools and said.startswith("call:"):
        digest = hashlib.sha256(f"{sim_name}|{said}".encode()).hexdigest()
        call = ToolCall(f"call_{digest[:8]}", _first_tool_name(tools), {"query": said[5:].strip()})
        steps.append((TOOL, b""))
        return Reply(steps, thinking, "", call, "stop", prompt_eval_count)
    limit = _num_predict(options)
    count = answer_tokens if limit is None else min(limit, answer_tokens)
    vocabulary = f"[{sim_name}] You said: {said}".split()
    encoded = {word: go_json(word + " ") for word in vocabulary}
    chosen = [vocabulary[i % len(vocabulary)] for i in range(max(count, 0))]
    steps.extend((CONTENT, encoded[word]) for word in chosen)
    content = "".join(word + " " for word in chosen)
    done_reason = "length" if limit is not None and limit < answer_tokens else "stop"
    return Reply(steps, thinking, content, None, done_reason, prompt_eval_count)


def context_tokens(text: str) -> list[int]:
    """Stand-in token ids for /api/generate's ``context``: one per word, stable."""
    return [zlib.crc32(word.encode()) % 200_000 + 1 for word in text.split()]


@dataclass(frozen=True, slots=True)
class Timings:
    """The final chunk's counters; durations in nanoseconds, zeros omitted like Go."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def fields(self) -> dict[str, int]:
        pairs = (
            ("total_duration", self.total_duration),
            ("load_duration", self.load_duration),
            ("prompt_eval_count", self.prompt_eval_count),
            ("prompt_eval_duration", self.prompt_eval_duration),
            ("eval_count", self.eval_count),
            ("eval_duration", self.eval_duration),
        )
        return {key: value for key, value in pairs if value}


class Encoder(Protocol):
    """The bytes of one API family for an answer being delivered."""

    content_type: str  # of the stream

    def opening(self) -> bytes:
        """Sent with the first chunk (SSE preambles); usually empty."""
        ...

    def chunk(self, kind: int, token: bytes) -> bytes: ...

    def closing(self, metrics: Timings) -> bytes: ...

    def stream_error(self, message: str) -> bytes:
        """The failure after the first byte: status 200 already went out."""
        ...

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        """The failure before the first byte, with a real status."""
        ...

    def whole(self, metrics: Timings) -> web.StreamResponse:
        """The non-streamed answer."""
        ...


Outcome = Literal["completed", "cancelled", "dropped"]


class ModelCall:
    """One model request from admission to its last byte, as seen by the stats."""

    __slots__ = ("_sim", "outcome", "tokens")

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self.outcome: Outcome | None = None
        self.tokens = 0

    def __enter__(self) -> ModelCall:
        stats = self._sim.stats
        stats.active += 1
        stats.max_active = max(stats.max_active, stats.active)
        self._sim.changed()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.outcome is None and exc_type is not None:
            # Handler cancellation (client gone while we waited) or a failed write that
            # escaped: both mean the client left. Anything else is a bug and stays uncounted.
            if issubclass(exc_type, asyncio.CancelledError | ConnectionError):
                self.outcome = "cancelled"
        elif self.outcome is None:
            self.outcome = "completed"
        stats = self._sim.stats
        stats.active -= 1
        stats.tokens_sent += self.tokens
        if self.outcome == "completed":
            stats.completed += 1
        elif self.outcome == "cancelled":
            stats.cancelled += 1
        elif self.outcome == "dropped":
            stats.dropped += 1
        self._sim.changed()


async def hold() -> None:
    """Wait until cancelled: the client went away or the server stopped."""
    await asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class Timing:
    """When each phase of a model request began, for the final chunk's counters."""

    started_ns: int  # handler entry, Ollama's checkpointStart
    loaded_ns: int = 0  # the model became available
    first_ns: int = 0  # the first token was due
    slot_ns: int = 0  # prompt evaluation began (a free slot); 0: as soon as loaded

    def metrics(self, answer: Reply, tokens: int) -> Timings:
        now = time.perf_counter_ns()
        # max(1, ...): a zero would vanish from the JSON (omitempty) and surprise clients.
        return Timings(
            total_duration=max(1, now - self.started_ns),
            load_duration=max(1, self.loaded_ns - self.started_ns),
            prompt_eval_count=answer.prompt_eval_count,
            prompt_eval_duration=max(1, self.first_ns - (self.slot_ns or self.loaded_ns)),
            eval_count=tokens,
            eval_duration=max(1, now - self.first_ns) if tokens else 0,
        )


def _cutoff(sim: Simulator) -> tuple[int | None, str]:
    faults = sim.faults
    candidates = [
        (faults.fail_after_tokens, "fail"),
        (faults.drop_after_tokens, "drop"),
        (faults.stall_after_tokens, "stall"),
    ]
    armed = [(at, action) for at, action in candidates if at is not None]
    if not armed:
        return None, ""
    at, action = min(armed, key=lambda pair: pair[0])
    return max(at, 0), action


async def deliver(
    sim: Simulator,
    request: web.Request,
    model: SimulatedModel,
    answer: Reply,
    encoder: Encoder,
    *,
    stream: bool,
    keep_alive: float | None,
    started_ns: int,
) -> web.StreamResponse:
    """Reply a model request that passed validation; see the module docstring."""
    with sim.model_call() as exchange:
        refusal = await sim.admit()
        if refusal is not None:
            return encoder.rejection(*refusal, streaming=False)
        cutoff = _cutoff(sim)
        timing = Timing(started_ns)
        if sim.costs is not None:
            return await sim.costs.deliver(
                request,
                exchange,
                model,
                answer,
                encoder,
                stream=stream,
                keep_alive=keep_alive,
                timing=timing,
                cutoff=cutoff,
            )
        await sim.load(model, keep_alive)
        try:
            timing.loaded_ns = time.perf_counter_ns()
            if sim.first_token_delay > 0:
                await asyncio.sleep(sim.first_token_delay)
            timing.first_ns = time.perf_counter_ns()
            tps = sim.tokens_per_second
            if not stream:
                return await play_whole(request, exchange, answer, encoder, timing, cutoff, tps)
            return await play_stream(
                request,
                exchange,
                answer,
                encoder,
                timing,
                cutoff,
                tps,
                split_final=sim.faults.split_final,
            )
        finally:
            sim.release(model, keep_alive)


async def play_stream(
    request: web.Request,
    exchange: ModelCall,
    answer: Reply,
    encoder: Encoder,
    timing: Timing,
    cutoff: tuple[int | None, str],
    tps: float,
    coalesce: float = 0.0,
    split_final: int = 1,
) -> web.StreamResponse:
    """Stream the answer at ``tps``; tokens due within ``coalesce`` seconds go at once;
    the final chunk in ``split_final`` pieces (Faults.split_final)."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / tps if tps > 0 else 0.0
    t0 = loop.time()
    steps = answer.steps
    count = len(steps)
    stop_at, action = cutoff
    response: web.StreamResponse | None = None
    position = 0
    try:
        # Positions 0..count-1 are tokens, position count is the final chunk.
        for position in range(count + 1):
            if interval:
                delay = t0 + position * interval - loop.time()
                if delay > coalesce:
                    await asyncio.sleep(delay)
            if position == stop_at:
                break
            opening = b""
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": encoder.content_type})
                await response.prepare(request)
                opening = encoder.opening()
            if position < count:
                data = encoder.chunk(*steps[position])
            else:
                data = encoder.closing(timing.metrics(answer, count))
                if split_final > 1:
                    await _write_split(response, opening + data, split_final)
                    continue
            await response.write(opening + data if opening else data)
        else:
            exchange.tokens = count
            return response if response is not None else web.Response()
        exchange.tokens = position
        if action == "fail":
            if response is None:
                return encoder.rejection(500, RUNNER_STOPPED, streaming=True)
            await response.write(encoder.stream_error(RUNNER_STOPPED))
            return response
        if action == "drop":
            return _drop(request, exchange, response)
        await hold()
        raise AssertionError("unreachable")
    except ConnectionError:
        # The client went away: aiohttp's write failed. Return quietly; aiohttp's own
        # attempt to finish the response fails the same way and is ignored.
        exchange.outcome = "cancelled"
        exchange.tokens = position
        return response if response is not None else web.Response()


async def play_whole(
    request: web.Request,
    exchange: ModelCall,
    answer: Reply,
    encoder: Encoder,
    timing: Timing,
    cutoff: tuple[int | None, str],
    tps: float,
    coalesce: float = 0.0,
) -> web.StreamResponse:
    """The answer in one piece, after the time its tokens take at ``tps``."""
    count = len(answer.steps)
    stop_at, action = cutoff
    struck = stop_at is not None and stop_at <= count
    produced = stop_at if struck and stop_at is not None else count
    if tps > 0 and produced:
        # One sleep for the whole answer: nobody sees the tokens of a non-streamed reply.
        await asyncio.sleep(produced / tps)
    if not struck:
        exchange.tokens = count
        return encoder.whole(timing.metrics(answer, count))
    if action == "fail":
        return encoder.rejection(500, RUNNER_STOPPED, streaming=False)
    if action == "drop":
        return _drop(request, exchange, None)
    await hold()
    raise AssertionError("unreachable")


async def _write_split(response: web.StreamResponse, data: bytes, pieces: int) -> None:
    size = max(1, -(-len(data) // pieces))
    for start in range(0, len(data), size):
        if start:
            await asyncio.sleep(SPLIT_GAP)  # the wire's pace, not a race being papered over
        await response.write(data[start : start + size])


SPLIT_GAP = 0.02


def _drop(
    request: web.Request, exchange: ModelCall, response: web.StreamResponse | None
) -> web.StreamResponse:
    """Abort the connection like a crashed process: no terminating chunk, no answer."""
    exchange.outcome = "dropped"
    if request.transport is not None:
        request.transport.abort()
    # aiohttp's attempt to finish this response meets the closed transport and gives up.
    return response if response is not None else web.Response()


class Delivery(Protocol):
    """The cost model's way of playing an answer (costs.Instance)."""

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
    ) -> web.StreamResponse: ...


class Simulator(Protocol):
    """The simulator as its route modules see it (server.Simulator): they name this
    and not the server, which imports them."""

    name: str
    version: str
    tokens_per_second: float
    first_token_delay: float
    answer_tokens: int
    cloud_disabled: bool
    faults: Faults
    models: dict[str, SimulatedModel]
    modified_at: dict[str, float]
    blobs: set[str]
    loaded: dict[str, float]
    context_lengths: dict[str, int]
    stats: SimulatorStats

    @property
    def costs(self) -> Delivery | None: ...

    def changed(self) -> None: ...

    def add_model(self, model: SimulatedModel, *, modified_at: float | None = None) -> None: ...

    def remove_model(self, name: str) -> bool: ...

    def resolve(self, name: str) -> SimulatedModel | None: ...

    def catalog(self, name: str) -> SimulatedModel: ...

    def is_loaded(self, name: str) -> bool: ...

    def hold(self, name: str) -> None: ...

    async def load(
        self, model: SimulatedModel, keep_alive: float | None, options: object = None
    ) -> None: ...

    def release(self, model: SimulatedModel, keep_alive: float | None) -> None: ...

    def unload(self, model: SimulatedModel) -> None: ...

    def model_call(self) -> ModelCall: ...

    async def admit(self) -> tuple[int, str] | None: ...
