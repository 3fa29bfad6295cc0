"""The relay: sends a request to a backend over the shared ClientSession and streams
the answer back byte for byte.

Hot path discipline: token streams of chat and generate are spliced (splice.py): their
bytes go from the backend socket's callback to the client with one append and one
write, no task woken per token. With the lane on (lane.py, the default) those streams
and whole answers go over the proxy's own keep-alive connections, parsed by httptools;
otherwise through aiohttp's client. Other answers are copied (answer.py: one read, one
append, one write per chunk). The first byte's time is taken once; counters are parsed
after the stream has ended (exchange.py). Idle streams are policed by the watchdog
(watchdog.py) from the chunks kept anyway, so no timer is touched per chunk.

aiohttp's client errors become ours in upstream.py (``Failure``): before the first byte
a failed connect or Ollama's 503 "server busy" moves the request to another backend.
After the first byte nothing is retried, and a failure ends the stream with Ollama's
final ``{"error": ...}`` line (an SSE error frame on ``/v1``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from olbproxy.answer import (
    DROP_RESPONSE,
    STREAMING_TYPES,
    copy_stream,
    copy_whole,
    end_broken,
    headers_of,
    send_reply,
)
from olbproxy.attempt import Deadlines, LanePath, Placement
from olbproxy.errors import Unavailable, UpstreamError, UpstreamTimeout
from olbproxy.exchange import Exchange, complete
from olbproxy.lane import Lane
from olbproxy.pool import Backend
from olbproxy.splice import Splice, can_splice, relay_spliced
from olbproxy.upstream import Failure, Upstream, request_head
from olbproxy.watchdog import Watchdog

# isinstance()'s tuple: ``bytes | None`` would build a union object per request.
_BYTES_OR_NONE = (bytes, type(None))

log = logging.getLogger("olbproxy.relay")


class Relay:
    """Forwards requests to backends and streams answers back."""

    def __init__(
        self,
        upstream: Upstream,
        watchdog: Watchdog,
        *,
        lane: Lane | None = None,
        fail_threshold: int,
        on_health_change: Callable[[Backend], None],
    ) -> None:
        self.upstream = upstream
        # The splice (splice.py) is off when the upstream has no HTTP/1.0 session for it.
        self.splicing = upstream.splice_session is not None
        # Whole answers on the proxy's own keep-alive connections (lane.py); None: aiohttp.
        self.lane = lane
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
        whole: bool = False,
    ) -> web.StreamResponse:
        """Try up to ``attempts`` backends before the first byte; then stream the answer.
        ``whole``: the client asked for the answer in one piece (``stream: false``)."""
        tried: list[Backend] = []
        last: Failure | None = None
        if not isinstance(body, _BYTES_OR_NONE):
            attempts = 1  # a streamed upload cannot be sent twice
        # The lane (lane.py), where it serves the instance: whole answers, and token
        # streams spliced from its body callback (the splice writes to the client).
        via_lane: LanePath | None = None
        lane_body: bytes | None = None
        if self.lane is not None and isinstance(body, _BYTES_OR_NONE):
            lane_body = body
            if whole and request.method != "HEAD":
                via_lane = self._whole
            elif exchange.marked_end and self.splicing and request.transport is not None:
                via_lane = self._streamed
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
                if via_lane is not None and self.lane is not None and self.lane.serves(backend.url):
                    return await via_lane(request, exchange, backend, lane_body, deadlines, path)
                return await self._attempt(request, exchange, backend, body, deadlines, path)
            except Failure as retry:
                self.errors[backend.label, retry.kind] += 1
                if not retry.retry:
                    self._failed(backend, retry.message)
                    if retry.kind == "timeout":
                        raise UpstreamTimeout(
                            f"backend {backend.label} sent no answer in time (first-byte timeout)"
                        ) from None
                    raise UpstreamError(retry.message) from None
                tried.append(backend)
                last = retry
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
        raise Unavailable(f"no backend could take the request ({last.message})")

    async def send_whole(
        self,
        request: web.Request,
        backend: Backend,
        path: str,
        body: bytes,
        *,
        seconds: float | None,
    ) -> tuple[int, str, bytes]:
        """One instance's whole answer (fan-outs); a failure is counted like any other."""
        try:
            return await self.upstream.send_whole(request, backend, path, body, seconds=seconds)
        except Failure as failure:
            self.errors[backend.label, failure.kind] += 1
            raise

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
        upstream = await self.upstream.open(
            request,
            backend,
            path,
            body,
            first_byte=deadlines.first_byte,
            splice=exchange.marked_end and self.splicing,
        )
        self._answered(backend, exchange, upstream.status)
        return await self._pipe(request, exchange, upstream, deadlines)

    async def _whole(
        self,
        request: web.Request,
        exchange: Exchange,
        backend: Backend,
        body: bytes | None,
        deadlines: Deadlines,
        path: str,
    ) -> web.StreamResponse:
        """A whole answer through the lane: read it all, then headers and body in one
        write. A backend that dies half-way is a Failure before anything went out."""
        assert self.lane is not None
        reply = await self.lane.send(
            backend.url,
            backend.label,
            request_head(request, backend, path, body) + (body or b""),
            seconds=deadlines.first_byte,
        )
        self._answered(backend, exchange, reply.status)
        return await send_reply(request, exchange, reply, headers_of(reply))

    def _answered(self, backend: Backend, exchange: Exchange, status: int) -> None:
        exchange.status = status
        if status >= 500:
            self._failed(backend, f"answered {status}")
        else:
            self._succeeded(backend)

    async def _streamed(
        self,
        request: web.Request,
        exchange: Exchange,
        backend: Backend,
        body: bytes | None,
        deadlines: Deadlines,
        path: str,
    ) -> web.StreamResponse:
        """A token stream through the lane: the headers go out when the instance's do,
        then each piece from the socket's callback through a Splice (no task woken per
        token), on a keep-alive connection (no connect per stream, as HTTP/1.0 needs)."""
        assert self.lane is not None and request.transport is not None
        lane = self.lane
        reply, stream = await lane.stream(
            backend.url,
            backend.label,
            request_head(request, backend, path, body) + (body or b""),
            seconds=deadlines.first_byte,
        )
        status = reply.status
        self._answered(backend, exchange, status)
        headers = headers_of(reply)
        if status != 200:
            # An error answer, read whole by the lane: sent as one.
            lane.finish(stream)
            return await send_reply(request, exchange, reply, headers)
        response = web.StreamResponse(status=status, reason=reply.reason, headers=headers)
        chunks = exchange.chunks
        watchdog = self.watchdog
        watchdog.watch(stream, deadlines.idle, chunks.__len__, stream.close)
        try:
            await response.prepare(request)
            exchange.first_byte = time.monotonic()
            splice = Splice(request.transport, chunks, stream)
            splice.framed = response.headers.get("Transfer-Encoding") == "chunked"
            stream.attach(splice)
            await splice.wait()
            if splice.client_gone:
                raise ConnectionResetError("the client went away")
            if not complete(chunks, sse=exchange.sse):
                # However cleanly the body ended, without Ollama's last line the backend
                # died or was cut off (or the watchdog hung up on it).
                raise Failure("backend connection lost mid-answer", kind="stream_broken")
            await response.write_eof()
        except Failure as failure:
            broken = self._broken(stream, deadlines, failure)
            await self._stream_broken(request, response, exchange, broken, fixed_length=False)
        except ConnectionResetError:
            exchange.outcome = "cancelled"  # the client left mid-answer: an ordinary end
            return response
        except asyncio.CancelledError:
            exchange.outcome = "cancelled"
            raise
        finally:
            watchdog.forget(stream)
            exchange.ended = time.monotonic()
            lane.finish(stream)  # back to the pool if read whole; else closed: Ollama stops
        if exchange.outcome == "pending":
            exchange.outcome = "done"
        return response

    async def _pipe(
        self,
        request: web.Request,
        exchange: Exchange,
        upstream: aiohttp.ClientResponse,
        deadlines: Deadlines,
    ) -> web.StreamResponse:
        headers: CIMultiDict[str] = CIMultiDict()
        fixed_length = False
        for name, value in upstream.headers.items():
            lower = name.lower()
            if lower not in DROP_RESPONSE:
                headers.add(name, value)
            elif lower == "content-length" and "transfer-encoding" not in upstream.headers:
                headers[name] = value  # same framing as the backend's
                fixed_length = True
        completed = False
        content_type = headers.get("Content-Type", "")
        streaming = content_type.startswith(STREAMING_TYPES)
        # A whole answer (stream:false, /api/tags, embeddings...) arrives at once: read
        # it, then send headers and body in one write. A StreamResponse sends its
        # headers the moment it is prepared, a system call of its own per request.
        whole = (
            fixed_length
            and not streaming
            and request.method != "HEAD"
            and upstream.status not in (204, 304)
        )
        response = (web.Response if whole else web.StreamResponse)(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        spliced = (
            exchange.marked_end and self.splicing and streaming and can_splice(request, upstream)
        )
        watchdog = self.watchdog
        chunks = exchange.chunks
        # Progress is the chunks kept anyway (both ways append each piece they forward).
        watchdog.watch(upstream, deadlines.idle, chunks.__len__, upstream.close)
        try:
            with self.upstream.reading():
                if spliced:
                    await relay_spliced(request, response, exchange, upstream)
                elif isinstance(response, web.Response):
                    await copy_whole(request, response, exchange, upstream)
                else:
                    await copy_stream(request, response, exchange, upstream)
                if (
                    exchange.marked_end
                    and streaming
                    and upstream.status == 200
                    and not complete(chunks, sse=exchange.sse)
                ):
                    # However cleanly the body ended (a spliced one ends at the close),
                    # without Ollama's last line the backend died or was cut off.
                    raise Failure("backend connection lost mid-answer", kind="stream_broken")
                await response.write_eof()
                completed = True
        except Failure as failure:
            broken = self._broken(upstream, deadlines, failure)
            await self._stream_broken(request, response, exchange, broken, fixed_length)
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
            if completed and not spliced:
                upstream.release()
            else:
                upstream.close()  # frees the GPU: Ollama stops when its client leaves
        if exchange.outcome == "pending":
            exchange.outcome = "done" if upstream.status < 400 else "error"
        return response

    def _broken(self, watched: object, deadlines: Deadlines, failure: Failure) -> Failure:
        """Why a stream broke: the watchdog ended it (idle), or the backend went away.
        ``watched``: what the watchdog watched (aiohttp's response, a lane connection)."""
        if watched in self.watchdog.timed_out:
            idle = deadlines.idle or 0
            return Failure(f"backend sent nothing for {idle:g}s", kind="idle_timeout")
        return failure

    async def _stream_broken(
        self,
        request: web.Request,
        response: web.StreamResponse,
        exchange: Exchange,
        broken: Failure,
        fixed_length: bool,
    ) -> None:
        exchange.outcome, exchange.error = "error", broken.message
        self.errors[exchange.backend or "", broken.kind] += 1
        log.warning(
            "%s %s on %s: %s", request.method, request.path, exchange.backend, broken.message
        )
        await end_broken(request, response, exchange, broken.message, fixed_length)
