"""One model request as the simulator keeps it, and the simulator it runs against.

:class:`ModelCall` counts the request in the stats from admission to its last byte;
:class:`Timing` notes when each of its phases began, for the final chunk's counters.
:class:`Simulator` is the server as the route modules see it, and :class:`Delivery` the
cost model's way of playing an answer: both name a :class:`ModelCall` and it names the
simulator back, so the three live together.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

from aiohttp import web

from olbproxy.simulator.answer import Encoder, Reply, Timings

if TYPE_CHECKING:
    from olbproxy.simulator.models import Faults, SimulatedModel, SimulatorStats


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
