"""Upstream: talking to Ollama instances, and the one place aiohttp's client errors
become ours.

Every request the proxy sends to an instance goes through ``Upstream``: a client's
request being relayed (``open``), a fan-out that reads whole answers (``send_whole``),
the proxy's own small requests (``fetch_json``: health probes, listings, warm-ups) and a
streamed progress answer (``streaming``). Whatever aiohttp raises comes out as a
``Failure``: what went wrong in a word (``kind``, also a metric label), whether another
instance may do better (``retry``), whether the instance is certainly down (``certain``:
nobody listens) or only busy (Ollama's 503 "server busy": its load queue is full).

What an instance is sent (``upstream_url``, ``upstream_headers``) is built here too:
the canonical path the edge routed, never the client's spelling, and of the client's
headers only an allow-list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from olbproxy.body import BODY
from olbproxy.pool import Backend
from olbproxy.settings import Settings
from olbproxy.splice import contract_problems, spliced_session

log = logging.getLogger("olbproxy.upstream")

# The request headers an instance gets from the client: an allow-list, because an
# instance forwards the client's headers to ollama.com for :cloud models, and the
# client's credentials (Authorization, X-Api-Key, cookies) and the identity headers of a
# front-end are ours to check, never the instance's to see. Ollama reads only these.
FORWARDED_REQUEST = ("Accept", "User-Agent")

Body = bytes | aiohttp.StreamReader | None


class Failure(Exception):
    """An instance failed us; ``kind`` names how (connect, reset, busy, timeout, ...)."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        retry: bool = False,
        busy: bool = False,
        certain: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retry = retry  # before the first byte: another instance may do better
        self.busy = busy  # Ollama's 503: busy, not broken
        self.certain = certain  # nobody listens: out of rotation at once


def upstream_url(backend: Backend, path: str) -> URL:
    """The instance's address for an already-encoded canonical path (edge.upstream_path);
    ``encoded=True`` so that nothing normalises it into another path on the way."""
    return URL(backend.url + path, encoded=True)


def _forwarded(request: web.Request, body: Body) -> list[tuple[str, str]]:
    """The client's headers an instance gets, with the body's type and length as the
    proxy read it (the Host is the caller's to add)."""
    pairs: list[tuple[str, str]] = []
    client = request.headers
    for name in FORWARDED_REQUEST:
        value = client.get(name)
        if value is not None:
            pairs.append((name, value))
    if isinstance(body, bytes):
        # Parsed as JSON on every JSON route, whatever the client called it.
        if BODY in request:
            pairs.append(("Content-Type", "application/json"))
        elif "Content-Type" in client:
            pairs.append(("Content-Type", client["Content-Type"]))
    elif body is not None:
        if "Content-Type" in client:
            pairs.append(("Content-Type", client["Content-Type"]))
        if request.content_length is not None:
            pairs.append(("Content-Length", str(request.content_length)))
    return pairs


def upstream_headers(request: web.Request, backend: Backend, body: Body) -> CIMultiDict[str]:
    """What an instance is told: its own Host, the allow-listed client headers, and the
    body's type and length as the proxy read it."""
    headers: CIMultiDict[str] = CIMultiDict(_forwarded(request, body))
    # Ollama bound to loopback answers 403 to a foreign Host.
    headers["Host"] = backend.host_header
    return headers


def request_head(request: web.Request, backend: Backend, path: str, body: bytes | None) -> bytes:
    """The same request as one HTTP/1.1 head in bytes, for the lane (lane.py). ``path``
    is already encoded (edge.upstream_path). A header value with a line break cannot
    come through aiohttp's parser; it is dropped here all the same, never sent."""
    lines = [f"{request.method} {path} HTTP/1.1\r\nHost: {backend.host_header}\r\n"]
    for name, value in _forwarded(request, body):
        if "\r" not in value and "\n" not in value:
            lines.append(f"{name}: {value}\r\n")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def _failure(exc: aiohttp.ClientError | TimeoutError, where: str) -> Failure:
    if isinstance(exc, TimeoutError):
        return Failure(f"{where}: no answer in time", kind="timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Failure(
            f"{where}: cannot connect: {exc.os_error}", kind="connect", retry=True, certain=True
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return Failure(f"{where}: connection failed: {exc!r}", kind="reset", retry=True)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return Failure(f"backend connection lost: {exc}", kind="stream_broken")
    return Failure(f"{where}: {exc}", kind="other")


class Upstream:
    """The sessions to the instances: HTTP/1.1 with a shared pool, and HTTP/1.0 for the
    token streams the splice forwards (None when the splice is off)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        splice_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.session = session
        self.splice_session = splice_session

    @classmethod
    def connect(cls, settings: Settings) -> Upstream:
        """The sessions for these settings (nothing is connected until a request)."""
        connector = aiohttp.TCPConnector(
            # Admission control bounds concurrency per instance; a connector limit would
            # only make stream 101 wait behind 100 others (aiohttp's default is 100).
            limit=0,
            limit_per_host=0,
            keepalive_timeout=60,
            ttl_dns_cache=300,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout),
            auto_decompress=False,
            # Send the headers upstream_headers chose; add none of aiohttp's own.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        splice = None
        if settings.relay.splice:
            if problems := contract_problems():
                log.warning(
                    "the splice is off: this aiohttp (%s) changed what it relies on (%s); "
                    "streams go through the documented API only",
                    aiohttp.__version__,
                    "; ".join(problems),
                )
            else:
                splice = spliced_session(settings.connect_timeout)
        return cls(session, splice)

    async def close(self) -> None:
        await self.session.close()
        if self.splice_session is not None:
            await self.splice_session.close()

    async def open(
        self,
        request: web.Request,
        backend: Backend,
        path: str,
        body: Body,
        *,
        first_byte: float | None,
        splice: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send a client's request; return once the answer's headers are in."""
        session = self.splice_session if splice and self.splice_session else self.session
        try:
            # Ollama sends its headers with the first token (or, for stream:false, with
            # the whole answer), so waiting for headers is waiting for the first byte.
            async with asyncio.timeout(first_byte):
                response = await session.request(
                    request.method,
                    upstream_url(backend, path),
                    data=body,
                    headers=upstream_headers(request, backend, body),
                    allow_redirects=False,
                    auto_decompress=False,
                )
                if response.status == 503:
                    # Ollama's only 503 is its full load queue: safe to try elsewhere.
                    text = (await response.read()).decode(errors="replace")[:300]
                    response.release()
                    raise Failure(f"busy (503): {text.strip()}", kind="busy", retry=True, busy=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, f"backend {backend.label}") from None
        return response

    @contextlib.contextmanager
    def reading(self) -> Any:
        """Around the reading of an answer under way: a lost backend becomes a Failure.
        aiohttp also raises a ConnectionResetError subclass when *our client* is gone;
        that one passes through as it is."""
        try:
            yield
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if isinstance(exc, ConnectionResetError):
                raise
            raise _failure(exc, "backend") from None

    async def fetch_json(
        self,
        backend: Backend,
        method: str,
        path: str,
        *,
        seconds: float,
        json: Any = None,
        agent: str | None = None,
    ) -> tuple[int, Any]:
        """A small request of the proxy's own, fully read; the body parsed if JSON.
        ``agent``: a User-Agent that tells it from clients in the instance's log."""
        headers = {"Host": backend.host_header, "Content-Type": "application/json"}
        if agent is not None:
            headers["User-Agent"] = agent
        try:
            async with self.session.request(
                method,
                upstream_url(backend, path),
                json=json,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                data = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, f"backend {backend.label}") from None
        try:
            return response.status, jsonlib.loads(data) if data else None
        except ValueError:
            return response.status, None

    async def send_whole(
        self,
        request: web.Request,
        backend: Backend,
        path: str,
        body: bytes,
        *,
        seconds: float | None,
    ) -> tuple[int, str, bytes]:
        """Send the client's request to one instance and read the whole answer."""
        try:
            async with self.session.request(
                request.method,
                upstream_url(backend, path),
                data=body,
                headers=upstream_headers(request, backend, body),
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                return (
                    response.status,
                    response.headers.get("Content-Type", ""),
                    await response.read(),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc, f"backend {backend.label}") from None

    @contextlib.asynccontextmanager
    async def streaming(
        self, request: web.Request, backend: Backend, path: str, body: bytes, *, connect: float
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A client's request whose (long) answer the caller reads line by line."""
        try:
            async with self.session.request(
                request.method,
                upstream_url(backend, path),
                data=body,
                headers=upstream_headers(request, backend, body),
                timeout=aiohttp.ClientTimeout(sock_connect=connect),
            ) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError):
                raise  # writing to our own client failed: it left
            raise _failure(exc, f"backend {backend.label}") from None
