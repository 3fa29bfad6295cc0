"""OllamaSimulator: a stand-in for a real Ollama server on a real socket.

It speaks Ollama's wire format byte for byte (see ``/work/shared/ollama-api.md``): the native
``/api/*`` routes, the OpenAI and Anthropic compatibility layers under ``/v1``, gin's 404/405
texts and the loopback ``Host`` check. Answers are deterministic and name the simulator and
the prompt (``[sim] You said: hello``), paced at ``tokens_per_second`` after an optional cold
load and first-token delay. Tests flip :class:`Faults` at run time and wait on
:meth:`OllamaSimulator.wait_until` instead of sleeping. The routes live in the sibling
modules (see the package docstring).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from multidict import CIMultiDict

from olbproxy.simulator import anthropic as simulator_anthropic
from olbproxy.simulator import completions as simulator_completions
from olbproxy.simulator import embedding as simulator_embedding
from olbproxy.simulator import library as simulator_library
from olbproxy.simulator import native as simulator_native
from olbproxy.simulator import openai as simulator_openai
from olbproxy.simulator import responses as simulator_responses
from olbproxy.simulator.call import ModelCall
from olbproxy.simulator.costs import CostModel, Instance, Machine
from olbproxy.simulator.models import (
    DEFAULT_MODELS,
    Faults,
    RecordedRequest,
    SimulatedModel,
    SimulatorStats,
)
from olbproxy.simulator.playback import hold
from olbproxy.simulator.wire import (
    BUSY,
    DEFAULT_KEEP_ALIVE,
    Rejected,
    allowed_host,
    canonical_name,
    error_reply,
)


class OllamaSimulator:
    """A simulated Ollama server; see the module docstring.

    ``tokens_per_second``, ``first_token_delay``, ``cold_load_delay``, ``answer_tokens`` and
    ``version`` are plain attributes that tests may change between requests.
    ``record_requests = False`` stops keeping :attr:`requests` (long benchmark runs).
    """

    def __init__(
        self,
        *,
        name: str = "sim",
        models: Iterable[SimulatedModel] = DEFAULT_MODELS,
        tokens_per_second: float = 50.0,
        first_token_delay: float = 0.0,
        cold_load_delay: float = 0.0,
        answer_tokens: int = 12,
        version: str = "0.12.6",
        enforce_host: bool = True,
        costs: CostModel | None = None,
        machine: Machine | None = None,
    ) -> None:
        self.name = name
        self.tokens_per_second = tokens_per_second
        self.first_token_delay = first_token_delay
        self.cold_load_delay = cold_load_delay
        self.answer_tokens = answer_tokens
        self.version = version
        self.cloud_disabled = False  # what /api/status reports (OLLAMA_NO_CLOUD)
        self.enforce_host = enforce_host
        self.record_requests = True
        self.faults = Faults()
        self.stats = SimulatorStats()
        self.requests: list[RecordedRequest] = []
        self.models: dict[str, SimulatedModel] = {}
        self.modified_at: dict[str, float] = {}  # wall clock, newest listed first
        self.blobs: set[str] = set()  # "sha256:<hex>" uploaded through /api/blobs
        self.loaded: dict[str, float] = {}  # model name -> expiry (time.monotonic())
        self.context_lengths: dict[str, int] = {}  # what /api/ps reports, per loaded model
        self.url = ""
        self.port = 0
        self._in_use: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        now = time.time()
        for index, model in enumerate(models):
            # Older entries get older timestamps so /api/tags keeps the order given.
            self.add_model(model, modified_at=now - 60.0 * (index + 1))
        self._transports: set[asyncio.Transport] = set()
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        # The cost model (costs.py); None keeps every answer as it always was.
        self.costs = Instance(self, costs, machine) if costs is not None else None
        if self.costs is not None:
            self.app.router.add_get("/simulator/costs", self.costs.handle)
        for method, path, handler in (
            *simulator_library.routes(self),
            *simulator_native.routes(self),
            *simulator_embedding.routes(self),
            *simulator_completions.routes(self),
            *simulator_openai.routes(self),
            *simulator_responses.routes(self),
            *simulator_anthropic.routes(self),
        ):
            self.app.router.add_route(method, path, handler)

    def __repr__(self) -> str:
        return f"<OllamaSimulator {self.name} {self.url or 'stopped'} {self.stats}>"

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        # A big backlog: the benchmark opens thousands of streams at once.
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=4096)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sockets = runner.addresses
        self.port = int(sockets[0][1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Close the listener and every open connection at once, like a killed process."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # CPython 3.11 leaks the socket of a connection accepted just before the listener
        # closes (Server._attach asserts, silently). So stop accepting first, let accepts
        # already under way finish, and only then close the listener.
        loop = asyncio.get_running_loop()
        listeners = [getattr(site, "_server", None) for site in runner.sites]
        for listener in listeners:
            for sock in getattr(listener, "sockets", None) or ():
                loop.remove_reader(sock.fileno())
        for _ in range(10):
            await asyncio.sleep(0)
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        for handler in list(server.connections) if server is not None else []:
            if handler.transport is not None:
                handler.transport.abort()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        await runner.cleanup()

    async def __aenter__(self) -> OllamaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- waiting ----------------------------------------------------------------------

    def changed(self) -> None:
        """Wake :meth:`wait_until` callers; called on every state change."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # The API other code is written against takes a timeout rather than asyncio.timeout().
    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> None:
        """Return once ``predicate()`` holds, re-checked on every state change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: condition not met within {timeout}s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                continue
            finally:
                self._waiters.discard(waiter)

    # -- models -----------------------------------------------------------------------

    def add_model(self, model: SimulatedModel, *, modified_at: float | None = None) -> None:
        name = canonical_name(model.name)
        if name != model.name:
            model = dataclasses.replace(model, name=name)
        self.models[name] = model
        self.modified_at[name] = time.time() if modified_at is None else modified_at
        self.changed()

    def remove_model(self, name: str) -> bool:
        found = self.models.pop(name, None) is not None
        self.modified_at.pop(name, None)
        self.loaded.pop(name, None)
        self.changed()
        return found

    def resolve(self, name: str) -> SimulatedModel | None:
        """The model a request names (case-insensitive, ``:latest`` implied)."""
        wanted = canonical_name(name)
        model = self.models.get(wanted)
        if model is not None:
            return model
        folded = wanted.lower()
        return next((m for k, m in self.models.items() if k.lower() == folded), None)

    def catalog(self, name: str) -> SimulatedModel:
        """What pulling ``name`` from the registry would bring."""
        name = canonical_name(name)
        for model in DEFAULT_MODELS:
            if model.name == name:
                return model
        if "embed" in name:
            return dataclasses.replace(DEFAULT_MODELS[2], name=name)
        return SimulatedModel(name)

    def is_loaded(self, name: str) -> bool:
        expiry = self.loaded.get(name)
        if expiry is None:
            return False
        if expiry > time.monotonic() or self._in_use.get(name):
            return True
        del self.loaded[name]
        return False

    def hold(self, name: str) -> None:
        """One more request uses the loaded model: it stays resident meanwhile."""
        self._in_use[name] = self._in_use.get(name, 0) + 1
        self.loaded.setdefault(name, time.monotonic() + DEFAULT_KEEP_ALIVE)

    async def load(
        self, model: SimulatedModel, keep_alive: float | None, options: object = None
    ) -> None:
        """Make ``model`` resident, paying ``cold_load_delay`` once; marks it in use."""
        if self.costs is not None:
            # The cost model loads (and reloads) on its own terms; the caller releases.
            runner = await self.costs.runner(model, self.costs.options_of(options))
            runner.users -= 1
            if runner.users == 0:
                runner.idle.set()
            return
        name = model.name
        resident = self.is_loaded(name)  # before counting this request as a user
        self._in_use[name] = self._in_use.get(name, 0) + 1
        try:
            if not resident:
                task = self._loading.get(name)
                if task is None:
                    task = asyncio.ensure_future(self._cold_load(name, self.cold_load_delay))
                    self._loading[name] = task
                # Shielded: one client giving up does not abort a load others wait for.
                await asyncio.shield(task)
            self._expire(name, keep_alive)
        except BaseException:
            self.release(model, keep_alive)
            raise

    async def _cold_load(self, name: str, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            self.loaded[name] = time.monotonic() + DEFAULT_KEEP_ALIVE
        finally:
            self._loading.pop(name, None)
        self.changed()

    def release(self, model: SimulatedModel, keep_alive: float | None) -> None:
        """The request using ``model`` ended: its keep_alive starts now (0 unloads)."""
        name = model.name
        if self.costs is not None:
            keep_alive = self.costs.keep_alive(keep_alive)  # compressed like everything else
        left = self._in_use.get(name, 0) - 1
        if left > 0:
            self._in_use[name] = left
        else:
            self._in_use.pop(name, None)
        if self.loaded.get(name) == 0.0:
            keep_alive = 0.0  # an unload was asked for while this request ran
        if name in self.loaded:
            self._expire(name, keep_alive)

    def unload(self, model: SimulatedModel) -> None:
        """``keep_alive: 0`` with nothing to answer: unload now, or when the last user ends."""
        if model.name in self.loaded:
            self.loaded[model.name] = 0.0
            self.is_loaded(model.name)
            self.changed()

    def _expire(self, name: str, keep_alive: float | None) -> None:
        seconds = DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
        self.loaded[name] = time.monotonic() + seconds
        if seconds == 0 and not self._in_use.get(name):
            del self.loaded[name]
        self.changed()

    # -- model requests ---------------------------------------------------------------

    def model_call(self) -> ModelCall:
        return ModelCall(self)

    async def admit(self) -> tuple[int, str] | None:
        """Faults that strike before anything else: ``(status, message)`` to answer with."""
        faults = self.faults
        if faults.hang:
            await hold()
        if faults.busy:
            if faults.busy > 0:
                faults.busy -= 1
            return 503, BUSY
        if faults.fail_before is not None:
            return 500, faults.fail_before
        return None

    # -- HTTP -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.record_requests:
            streamed = request.method == "POST" and request.path.startswith("/api/blobs/")
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=request.query_string,
                    headers=CIMultiDict(request.headers),
                    body=b"" if streamed else await request.read(),
                    received_at=time.monotonic(),
                    target=request.raw_path,
                    version=f"{request.version.major}.{request.version.minor}",
                )
            )
            self.changed()
        if self.enforce_host and not allowed_host(request.headers.get("Host", "")):
            return web.Response(status=403)
        http_exception = request.match_info.http_exception
        if http_exception is not None:
            # gin's texts, not aiohttp's; content type exactly "text/plain".
            if http_exception.status == 405:
                return _plain(405, b"405 method not allowed")
            return _plain(404, b"404 page not found")
        transport = request.transport
        if transport is not None:
            self._transports.add(transport)
        try:
            return await handler(request)
        except Rejected as rejected:
            if request.path.startswith("/v1/messages"):
                return simulator_anthropic.render_rejection(rejected)
            if request.path.startswith("/v1/"):
                return simulator_openai.render_rejection(rejected)
            return error_reply(rejected.status, rejected.message)
        finally:
            if transport is not None:
                self._transports.discard(transport)


def _plain(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": "text/plain"})
