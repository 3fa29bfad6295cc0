"""Lane: the proxy's own pooled HTTP/1.1 keep-alive connections to the instances.

Through aiohttp's client a request costs ~100 µs of CPU (its request and response
objects, a ``StreamReader``, the connector's bookkeeping, a timer), and a token stream
spliced over aiohttp (splice.py) also needs a new connection each time (HTTP/1.0, so
that the body comes unframed). Here a request is one prepared ``bytes`` head plus the
body in one ``write`` on a kept-alive connection; httptools (llhttp, the parser
uvloop's authors maintain: Content-Length and chunked framing, keep-alive) parses the
answer in the socket's ``data_received`` callback. One such connection and its parser
are connection.py's; the pool of them, per instance, is this module's ``Lane``.

* **Whole answers** (``stream: false``, embeddings, their ``/v1`` forms): the waiting
  handler is woken once, when the message is complete (``Lane.send``).
* **Token streams** (``Lane.stream``): the handler is woken at the headers; from then
  on each de-chunked piece goes from httptools' body callback straight to a sink,
  ``splice.Splice``, which writes it to the client: no task woken per token, as with
  the splice on aiohttp. The connection goes back to the pool once the answer ended
  whole (``Lane.finish``), and is closed otherwise, which stops Ollama generating.

A bench side harness measured whole answers: a bare aiohttp pass-through answers a
small request in 175 µs of CPU through aiohttp's client, 76 µs through this (README,
"What each change bought").

What it does not do, on purpose: TLS (an ``https://`` instance goes through aiohttp),
redirects, cookies, compression (Ollama sends none unasked, and we ask for none),
``Expect: 100-continue``, and streamed request bodies (blob uploads go through
aiohttp). Errors come out as ``upstream.Failure`` with the same kinds as aiohttp's, so
the relay retries, counts and reports them the same way either path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

from olbproxy.connection import IDLE_SECONDS, Connection, Instance, Reply
from olbproxy.upstream import Failure

# A streamed answer's connection, as the relay holds it (attach a sink, then finish).
Stream = Connection


def _raise_busy(reply: Reply) -> None:
    if reply.status == 503:
        text = reply.body.decode(errors="replace")[:300].strip()
        raise Failure(f"busy (503): {text}", kind="busy", retry=True, busy=True)


class Lane:
    """Answers from the instances over pooled keep-alive connections."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._instances: dict[str, Instance] = {}

    @staticmethod
    def serves(url: str) -> bool:
        """Only plain HTTP instances: TLS to an instance goes through aiohttp."""
        return url.startswith("http://")

    async def send(self, url: str, label: str, data: bytes, *, seconds: float | None) -> Reply:
        """Send one prepared request (head and body) to the instance at ``url`` and read
        its whole answer within ``seconds``. Raises ``Failure`` as upstream.Upstream
        does (Ollama's 503 is "busy": another instance may take it); cancellation and
        timeouts close the connection, which stops Ollama generating."""
        connection = await self._start(url, label, data, seconds, streaming=False)
        reply = connection.reply()
        self.finish(connection)
        _raise_busy(reply)
        return reply

    async def stream(
        self, url: str, label: str, data: bytes, *, seconds: float | None
    ) -> tuple[Reply, Stream]:
        """Send one prepared request and wait ``seconds`` for its answer's headers: the
        status and headers (and any body that came with them), and the connection
        whose body ``attach`` hands to a sink as it arrives. ``finish`` it after. An
        answer other than 200 is read whole (``complete``) before this returns."""
        connection = await self._start(url, label, data, seconds, streaming=True)
        reply = connection.reply()
        if reply.status == 503:
            self.finish(connection)
            _raise_busy(reply)
        return reply, connection

    def finish(self, connection: Stream) -> None:
        """Back to its pool if the answer was read whole and the instance keeps it open;
        closed otherwise (a stream cut short must stop Ollama generating)."""
        home = connection.home
        if (
            connection.complete
            and connection.keep
            and not connection.paused  # the answer ended while a slow client caught up
            and connection.transport is not None
            and home is not None
            and not home.retired
        ):
            connection.sink = None
            connection.idle_since = now = time.monotonic()
            idle = home.idle
            idle.append(connection)
            # The least recently used wait at the left: those idle too long go.
            while now - idle[0].idle_since >= IDLE_SECONDS:
                idle.popleft().close()
        else:
            connection.close()

    async def _start(
        self, url: str, label: str, data: bytes, seconds: float | None, *, streaming: bool
    ) -> Connection:
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        instance = self._instances.get(url)
        if instance is None:
            instance = self._instances[url] = Instance(url)
        now = time.monotonic()
        idle = instance.idle
        connection = None
        while idle:
            candidate = idle.pop()
            if candidate.usable(now):
                connection = candidate
                break
            candidate.close()
        try:
            if connection is None:
                connection = await self._connect(instance, deadline)
                await connection.start(data, deadline, streaming=streaming)
            else:
                try:
                    await connection.start(data, deadline, streaming=streaming)
                except Failure as failure:
                    if failure.kind != "reset":
                        raise
                    # The instance closed this idle connection as the request went out
                    # (a keep-alive timeout, a restart) and nothing came back: it never
                    # started, so once more on a new connection, as Go's client does.
                    connection = await self._connect(instance, deadline)
                    await connection.start(data, deadline, streaming=streaming)
        except Failure as failure:
            failure.message = f"backend {label}: {failure.message}"
            raise
        return connection

    async def _connect(self, instance: Instance, deadline: float | None) -> Connection:
        loop = asyncio.get_running_loop()
        limit = loop.time() + self.connect_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                _, connection = await loop.create_connection(
                    Connection, instance.host, instance.port
                )
                connection.home = instance
        except TimeoutError:
            if deadline is not None and deadline <= limit:
                raise Failure("no answer in time", kind="timeout") from None
            raise Failure(
                f"cannot connect: no answer in {self.connect_timeout:g}s",
                kind="connect",
                retry=True,
            ) from None
        except OSError as exc:
            raise Failure(
                f"cannot connect: {exc}", kind="connect", retry=True, certain=True
            ) from None
        return connection

    def keep_only(self, urls: Collection[str]) -> None:
        """A reload dropped instances: their idle connections close now, and those
        still answering close when they finish."""
        for url in [url for url in self._instances if url not in urls]:
            instance = self._instances.pop(url)
            instance.retired = True
            while instance.idle:
                instance.idle.pop().close()

    def close(self) -> None:
        for instance in self._instances.values():
            while instance.idle:
                instance.idle.pop().close()
        self._instances.clear()
