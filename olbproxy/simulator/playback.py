"""How an answer reaches the client: paced, timed, and struck by faults.

:func:`deliver` plays a :class:`~olbproxy.simulator.answer.Reply` like Ollama does: the
``busy``/``fail_before``/``hang`` faults, the (cold) model load, the first-token delay, then
one chunk per token on an absolute schedule ``t0 + i / tokens_per_second`` (no drift), and
the final chunk with real timings. The response is prepared only when its first chunk is
due, because gin sends headers with the first write. With the cost model on, the model's
Instance (costs.py) plays it instead, through :func:`play_stream` and :func:`play_whole`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from olbproxy.simulator.answer import Encoder, Reply
from olbproxy.simulator.call import ModelCall, Timing
from olbproxy.simulator.wire import RUNNER_STOPPED

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel


async def hold() -> None:
    """Wait until cancelled: the client went away or the server stopped."""
    await asyncio.get_running_loop().create_future()


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
