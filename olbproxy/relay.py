"""The relay: sends a request to a backend over the shared ClientSession and streams
the answer back byte for byte.

Hot path discipline: token streams of chat and generate are spliced (splice.py): their
bytes go from the backend socket's callback to the client with one append and one
write, no task woken per token. Other answers go through ``_copy``: one read, one
append, one write per chunk. The first byte's time is taken once; counters are parsed
after the stream has ended (exchange.py). Idle streams are policed by the watchdog
(watchdog.py) from byte counts kept anyway, so no timer is touched per chunk.

aiohttp client errors before the first byte become ours at one boundary (``_open``):
a failed connect or Ollama's 503 "server busy" moves the request to another backend.
After the first byte nothing is retried, and a failure ends the stream with Ollama's
final ``{"error": ...}`` line (an SSE error frame on ``/v1``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json as jsonlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from olbproxy.body import BODY
from olbproxy.errors import (
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    stream_error_line,
)
from olbproxy.exchange import Exchange
from olbproxy.pool import Backend
from olbproxy.splice import SPLICE_HEADER, Splice, relay_spliced
from olbproxy.watchdog import Watchdog

log = logging.getLogger("olbproxy.relay")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The request headers a backend gets from the client: an allow-list, because an
# instance forwards the client's headers to ollama.com for :cloud models, and the
# client's credentials (Authorization, X-Api-Key, cookies) and the identity headers of a
# front-end are ours to check, never the backend's to see. Ollama reads only these.
FORWARDED_REQUEST = ("Accept", "User-Agent")
DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
STREAMING_TYPES = ("application/x-ndjson", "text/event-stream")


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Seconds allowed to the first byte (None: unbounded) and between two chunks."""

    first_byte: float | None
    idle: float | None = None


class Placement(Protocol):
    """Where an attempt goes: hands out a backend and takes it back afterwards."""

    async def acquire(self, exclude: Sequence[Backend]) -> Backend: ...

    def release(self, backend: Backend) -> None: ...


class _Retry(Exception):
    """This backend failed before answering; another one may do better."""

    def __init__(
        self, message: str, *, kind: str, busy: bool = False, certain: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.busy = busy
        self.certain = certain


class _StreamBroken(Exception):
    """The backend failed after the first byte went to the client."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Relay:
    """Forwards requests to backends and streams answers back."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        watchdog: Watchdog,
        *,
        fail_threshold: int,
        on_health_change: Callable[[Backend], None],
    ) -> None:
        self.session = session
        self.watchdog = watchdog
        self.fail_threshold = fail_threshold
        self.on_health_change = on_health_change
        # Upstream failures by (backend label, kind); metrics read it at scrape time.
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()

    async def forward(
        self,
        request: web.Request,
        exchange: Exchange,
        placement: Placement,
        *,
        body: bytes | aiohttp.StreamReader | None,
        path: str,
        deadlines: Deadlines,
        attempts: int = 1,
    ) -> web.StreamResponse:
        """Try up to ``attempts`` backends before the first byte; then stream the answer."""
        tried: list[Backend] = []
        last: _Retry | None = None
        if not isinstance(body, bytes | None):
            attempts = 1  # a streamed upload cannot be sent twice
        for _ in range(attempts):
            waited = time.monotonic()
            try:
                backend = await placement.acquire(tried)
            except Unavailable:
                if last is None:
                    raise
                break  # nobody left to try: report why the tried ones failed
            finally:
                exchange.queue_wait += time.monotonic() - waited
            exchange.backend = backend.label
            exchange.attempts += 1
            try:
                return await self._attempt(request, exchange, backend, body, deadlines, path)
            except _Retry as retry:
                tried.append(backend)
                last = retry
                self.errors[backend.label, retry.kind] += 1
                log.warning(
                    "attempt %d for %s %s on %s failed: %s",
                    exchange.attempts,
                    request.method,
                    request.path,
                    backend.label,
                    retry.message,
                )
                if not retry.busy:
                    self._failed(backend, retry.message, certain=retry.certain)
            finally:
                placement.release(backend)
        assert last is not None
        raise Unavailable(f"no backend could take the request ({last.message})", retry_after=5)

    async def fetch_json(
        self, backend: Backend, method: str, path: str, *, seconds: float, json: Any = None
    ) -> tuple[int, Any]:
        """A small request of the proxy's own (catalog, health, fan-out), fully read."""
        async with self.session.request(
            method,
            backend.url + path,
            json=json,
            headers={"Host": backend.host_header},
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            data = await resp.read()
        try:
            return resp.status, jsonlib.loads(data) if data else None
        except ValueError:
            return resp.status, None

    async def send_whole(
        self,
        request: web.Request,
        backend: Backend,
        path: str,
        body: bytes,
        *,
        seconds: float | None,
    ) -> tuple[int, str, bytes]:
        """Send the client's request to one backend and read the whole answer (fan-outs)."""
        async with self.session.request(
            request.method,
            upstream_url(backend, path),
            data=body,
            headers=upstream_headers(request, backend, body),
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    def _failed(self, backend: Backend, reason: str, *, certain: bool = False) -> None:
        if backend.mark_failed(reason, threshold=self.fail_threshold, certain=certain):
            log.warning("backend %s is out of rotation: %s", backend.label, reason)
            self.on_health_change(backend)

    def _succeeded(self, backend: Backend) -> None:
        if (backend.failures or not backend.healthy) and backend.mark_ok():
            log.info("backend %s is back in rotation", backend.label)
            self.on_health_change(backend)

    async def _attempt(
        self,
        request: web.Request,
        exchange: Exchange,
        backend: Backend,
        body: bytes | aiohttp.StreamReader | None,
        deadlines: Deadlines,
        path: str,
    ) -> web.StreamResponse:
        upstream = await self._open(request, backend, body, deadlines, path, exchange.splice)
        exchange.status = upstream.status
        if upstream.status >= 500:
            self._failed(backend, f"answered {upstream.status}")
        else:
            self._succeeded(backend)
        return await self._pipe(request, exchange, upstream, deadlines)

    async def _pipe(
        self,
        request: web.Request,
        exchange: Exchange,
        upstream: aiohttp.ClientResponse,
        deadlines: Deadlines,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        fixed_length = False
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower not in DROP_RESPONSE:
                response.headers.add(name, value)
            elif lower == "content-length" and "transfer-encoding" not in upstream.headers:
                response.headers[name] = value  # same framing as the backend's
                fixed_length = True
        completed = False
        content_type = response.headers.get("Content-Type", "")
        splice = None
        if (
            exchange.splice
            and not fixed_length
            and "transfer-encoding" not in upstream.headers  # raw body up to the close
            and content_type.startswith(STREAMING_TYPES)
            and request.transport is not None
            and upstream.connection is not None
        ):
            protocol = upstream.connection.protocol
            assert protocol is not None  # a connection that is open has its protocol
            splice = Splice(request.transport, exchange.chunks, protocol)
        watchdog = self.watchdog
        content = upstream.content
        if splice is None:
            watchdog.watch(upstream, deadlines.idle, lambda: content.total_bytes, upstream.close)
        else:
            watchdog.watch(
                upstream,
                deadlines.idle,
                lambda: content.total_bytes + splice.received,
                upstream.close,
            )
        try:
            try:
                if splice is None:
                    await self._copy(request, response, exchange, upstream)
                else:
                    if not await relay_spliced(request, response, exchange, upstream, splice):
                        # A spliced body ends at the connection's close: without Ollama's
                        # last line, the backend died or was cut off mid-answer.
                        message = "backend connection lost mid-answer"
                        raise self._broken(upstream, deadlines, message)
                completed = True
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                if isinstance(exc, ConnectionResetError) and response.prepared:
                    raise  # our client went away (aiohttp's ClientConnectionResetError)
                message = f"backend connection lost: {exc}"
                raise self._broken(upstream, deadlines, message) from None
        except _StreamBroken as broken:
            exchange.outcome, exchange.error = "error", str(broken)
            self.errors[exchange.backend or "", broken.kind] += 1
            await self._end_broken(request, response, exchange, str(broken), fixed_length)
        except ConnectionResetError:
            # The client left mid-answer: an ordinary end, not an error to log.
            exchange.outcome = "cancelled"
            return response
        except asyncio.CancelledError:
            exchange.outcome = "cancelled"
            raise
        finally:
            watchdog.forget(upstream)
            exchange.ended = time.monotonic()
            if completed and splice is None:
                upstream.release()
            else:
                upstream.close()  # frees the GPU: Ollama stops when its client leaves
        if exchange.outcome == "pending":
            exchange.outcome = "done" if upstream.status < 400 else "error"
        return response

    def _broken(
        self, upstream: aiohttp.ClientResponse, deadlines: Deadlines, message: str
    ) -> _StreamBroken:
        if upstream in self.watchdog.timed_out:
            return _StreamBroken(
                f"backend sent nothing for {deadlines.idle or 0:g}s", kind="idle_timeout"
            )
        return _StreamBroken(message, kind="stream_broken")

    async def _copy(
        self,
        request: web.Request,
        response: web.StreamResponse,
        exchange: Exchange,
        upstream: aiohttp.ClientResponse,
    ) -> None:
        read = upstream.content.readany
        chunk = await read()
        await response.prepare(request)
        exchange.first_byte = time.monotonic()
        write = response.write
        chunks = exchange.chunks
        append = chunks.append
        while chunk:
            append(chunk)
            await write(chunk)
            chunk = await read()
        await response.write_eof()

    async def _end_broken(
        self,
        request: web.Request,
        response: web.StreamResponse,
        exchange: Exchange,
        message: str,
        fixed_length: bool,
    ) -> None:
        log.warning("%s %s on %s: %s", request.method, request.path, exchange.backend, message)
        if not response.prepared:
            await response.prepare(request)
        content_type = response.headers.get("Content-Type", "")
        if fixed_length or not content_type.startswith(STREAMING_TYPES):
            # A body with a fixed length cannot carry an error line; cutting the
            # connection is the only honest signal left.
            if request.transport is not None:
                request.transport.close()
            return
        with contextlib.suppress(ConnectionResetError):
            await response.write(stream_error_line(message, exchange.shape, sse=exchange.sse))
            await response.write_eof()

    async def _open(
        self,
        request: web.Request,
        backend: Backend,
        body: bytes | aiohttp.StreamReader | None,
        deadlines: Deadlines,
        path: str,
        splice: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send the request and wait for the answer's headers; the one place where aiohttp
        client errors before the first byte become olbproxy errors (or a retry)."""
        headers = upstream_headers(request, backend, body)
        if splice:
            # A spliced stream needs a body without chunk framing: HTTP/1.0 (splice.py).
            headers[SPLICE_HEADER] = "1"
        try:
            # Ollama sends its headers with the first token (or, for stream:false, with
            # the whole answer), so waiting for headers is waiting for the first byte.
            async with asyncio.timeout(deadlines.first_byte):
                upstream = await self.session.request(
                    request.method,
                    upstream_url(backend, path),
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    auto_decompress=False,
                )
                if upstream.status == 503:
                    # Ollama's only 503 is its full load queue: safe to try elsewhere.
                    text = (await upstream.read()).decode(errors="replace")[:300]
                    upstream.release()
                    raise _Retry(f"busy (503): {text.strip()}", kind="busy", busy=True)
        except TimeoutError:
            self._failed(backend, "timed out")
            self.errors[backend.label, "timeout"] += 1
            raise UpstreamTimeout(
                f"backend {backend.label} sent no answer in time (first-byte timeout)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise _Retry(f"cannot connect: {exc.os_error}", kind="connect", certain=True) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise _Retry(f"connection failed: {exc!r}", kind="reset") from None
        except aiohttp.ClientError as exc:
            self.errors[backend.label, "other"] += 1
            raise UpstreamError(f"backend {backend.label} failed: {exc}") from None
        return upstream


def upstream_url(backend: Backend, path: str) -> URL:
    """The backend's address for an already-encoded canonical path (edge.upstream_path);
    ``encoded=True`` so that nothing normalises it into another path on the way."""
    return URL(backend.url + path, encoded=True)


def upstream_headers(
    request: web.Request, backend: Backend, body: bytes | aiohttp.StreamReader | None
) -> CIMultiDict[str]:
    """What a backend is told: its own Host, the allow-listed client headers, and the
    body's type and length as the proxy read it."""
    headers: CIMultiDict[str] = CIMultiDict()
    client = request.headers
    for name in FORWARDED_REQUEST:
        value = client.get(name)
        if value is not None:
            headers[name] = value
    headers["Host"] = backend.host_header
    if isinstance(body, bytes):
        # Parsed as JSON on every JSON route, whatever the client called it.
        if BODY in request:
            headers["Content-Type"] = "application/json"
        elif "Content-Type" in client:
            headers["Content-Type"] = client["Content-Type"]
    elif body is not None:
        if "Content-Type" in client:
            headers["Content-Type"] = client["Content-Type"]
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
    return headers
