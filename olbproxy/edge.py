"""The edge: every request classified once, on one canonical path, before anything else.

Deny by default. The app has a single aiohttp route; ``Edge.dispatch`` takes the raw
request target, checks it once (``canonical_path``: dot segments, encoded slashes and
backslashes, empty segments and control characters are refused with 400, other
percent-escapes are decoded), finds the one ``Route`` of the table that serves it (404
for a path no route declares, 405 for another method on a known path), authenticates
the caller unless the route is public, refuses non-admins on admin routes, and only then
calls the route's handler. The handler forwards exactly the canonical path it was
routed on (``upstream_path``), never the raw target: what a backend sees is what was
authorised.

``dispatch`` is also the only place a ``ProxyError`` becomes a response (never a second
one once a response has started), and where CORS preflights are answered. The app has
no aiohttp middlewares: the two it had, and the wrapper aiohttp adds around them, made a
small request 922,000 instructions against 902,000 now (``bench.instructions``).
Request targets aiohttp's router cannot take at all (``OPTIONS *``, ``CONNECT host:port``:
no path) never reach the edge; aiohttp answers them 404 itself, without credentials or
a backend involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from aiohttp import web

from olbproxy import access
from olbproxy.auth.principal import ANONYMOUS, OPEN, PRINCIPAL, Principal
from olbproxy.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    UnsupportedMediaType,
    render,
    shape_of,
    stream_error_line,
)

log = logging.getLogger("olbproxy.edge")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Authenticate = Callable[[web.Request], Awaitable[Principal]]
# Who may call a route: anyone (``/``, login), any authenticated user, or admins only.
Access = Literal["anonymous", "user", "admin"]

# -- the canonical path ----------------------------------------------------------------

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Encoded "/" and "\": Go's net/http (Ollama) decodes them before routing, so the proxy
# and the backend would see different segments.
_SEPARATOR_ESCAPE = re.compile(r"%(2[Ff]|5[Cc])")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
# What stays literal when the canonical path is percent-encoded again for the backend.
PATH_SAFE = "/:@!$&'()*+,;=~"


def canonical_path(target: str) -> str:
    """The one path a request is routed, authorised and forwarded on; 400 if it has none.

    ``target`` is the request target as received (``request.raw_path``); the query is
    not part of the path (no Ollama route reads one, and none is forwarded).
    """
    path = target.partition("?")[0]
    if not path.startswith("/"):
        raise BadRequest("the request target must be a path starting with '/'")
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            raise BadRequest("malformed percent-encoding in the request path")
        if _SEPARATOR_ESCAPE.search(path):
            raise BadRequest("encoded '/' or '\\' in the request path")
        try:
            path = unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the request path is not UTF-8") from None
    if _FORBIDDEN_CHARS.search(path):
        raise BadRequest("control characters or '\\' in the request path")
    segments = path.split("/")
    for index, segment in enumerate(segments[1:], 1):
        if segment in (".", ".."):
            raise BadRequest("dot segments ('.' or '..') in the request path")
        if not segment and index < len(segments) - 1:
            raise BadRequest("empty segment ('//') in the request path")
    return path


# -- routes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One path template, the methods it takes, who may call it and what serves it.

    Templates are literal paths, with ``{name}`` for one segment or ``{name:tail}`` for
    the rest of the path. GET implies HEAD, as in Ollama.
    """

    path: str
    methods: tuple[str, ...]
    handler: Handler = field(compare=False)
    access: Access = "user"
    # The reason a non-admin reads on an admin route.
    refusal: str = ""


def route(
    path: str,
    methods: str | Iterable[str],
    handler: Handler,
    access: Access = "user",
    *,
    refusal: str = "",
) -> list[Route]:
    """A route per method (the table merges them by path)."""
    names = (methods,) if isinstance(methods, str) else tuple(methods)
    return [Route(path, (m,), handler, access, refusal) for m in names]


@dataclass(frozen=True, slots=True)
class Match:
    """The route a request was classified into, on its canonical path."""

    route: Route
    path: str
    params: Mapping[str, str]


MATCH = web.RequestKey("match", Match)

_PARAM = re.compile(r"\{(\w+)(?::tail)?\}")


class RouteTable:
    """Routes by path template: a dict for literal paths, a short list of patterns."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._static: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[re.Pattern[str], str, dict[str, Route]]] = []
        for item in routes:
            self.add(item)

    def add(self, item: Route) -> None:
        by_method = self._methods_of(item.path)
        for method in item.methods:
            if method in by_method:
                raise ValueError(f"two routes for {method} {item.path}")
            by_method[method] = item
            if method == "GET":
                by_method.setdefault("HEAD", item)

    def _methods_of(self, template: str) -> dict[str, Route]:
        if "{" not in template:
            return self._static.setdefault(template, {})
        for _pattern, known, methods in self._patterns:
            if known == template:
                return methods
        regex = "^"
        last = 0
        for m in _PARAM.finditer(template):
            regex += re.escape(template[last : m.start()])
            tail = m.group(0).endswith(":tail}")
            regex += f"(?P<{m.group(1)}>{'.+' if tail else '[^/]+'})"
            last = m.end()
        regex += re.escape(template[last:]) + "$"
        fresh: dict[str, Route] = {}
        self._patterns.append((re.compile(regex), template, fresh))
        return fresh

    def resolve(self, method: str, path: str) -> tuple[Route, Mapping[str, str]]:
        """The route for ``method`` on ``path``: 404 for an unknown path, 405 for a method
        the path does not take."""
        params: Mapping[str, str] = {}
        methods = self._static.get(path)
        if methods is None:
            for pattern, _template, candidates in self._patterns:
                found = pattern.match(path)
                if found is not None:
                    methods, params = candidates, found.groupdict()
                    break
        if methods is None:
            raise NotFound(f"404 page not found: no endpoint {path}")
        chosen = methods.get(method)
        if chosen is None:
            allow = ", ".join(sorted(methods))
            raise MethodNotAllowed(f"method {method} is not allowed on {path}", allow=allow)
        return chosen, params

    def templates(self) -> list[str]:
        return [*self._static, *(template for _p, template, _m in self._patterns)]


def upstream_path(request: web.Request) -> str:
    """The canonical path, percent-encoded again: what a backend is asked for."""
    return quote(request[MATCH].path, safe=PATH_SAFE)


class Edge:
    """The app's one handler: canonical path -> route -> principal -> rule -> handler."""

    def __init__(
        self,
        table: RouteTable,
        authenticate: Authenticate | None,
        *,
        failures: Counter[str] | None = None,
        origins: tuple[str, ...] = (),
    ) -> None:
        self.table = table
        # None: authentication is switched off and every caller is an admin (OPEN).
        self.authenticate = authenticate
        self.failures: Counter[str] = Counter() if failures is None else failures
        self.origins = DEFAULT_ORIGINS + origins  # CORS

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """The app's one handler: everything a request meets before its route's handler
        (``_dispatch``), and the rendering of whatever it raises."""
        try:
            return await self._dispatch(request)
        except ProxyError as error:
            if isinstance(error, Forbidden) and PRINCIPAL in request:
                self.failures["forbidden"] += 1  # an admin route, a model outside the groups
            return await _answer(request, error)
        except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            # The traceback goes to the log, under a reference the client can quote;
            # Python internals never go to the client.
            ref = secrets.token_hex(4)
            log.exception("unhandled error %s on %s %s", ref, request.method, request.path)
            return await _answer(request, ProxyError(f"internal error (reference {ref})"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS" and (answer := self._preflight(request)):
            return answer
        path = canonical_path(request.raw_path)
        chosen, params = self.table.resolve(request.method, path)
        request[MATCH] = Match(chosen, path, params)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # Ollama reads request bodies as sent and would not decode them either.
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
            )
        principal: Principal
        if self.authenticate is None:
            principal = OPEN
        elif chosen.access == "anonymous":
            principal = ANONYMOUS
        else:
            principal = await self.authenticate(request)
        request[PRINCIPAL] = principal
        if chosen.access == "admin" and not principal.is_admin:
            raise Forbidden(chosen.refusal or f"{path} is for admins")
        return await chosen.handler(request)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: from now on an error can only end this response (see
        ``_answer``); and the CORS header for an allowed origin, streamed answers too."""
        request[STARTED] = response
        origin = request.headers.get("Origin")
        if origin and origin_allowed(origin, self.origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    def _preflight(self, request: web.Request) -> web.Response | None:
        """A CORS preflight's answer (no credentials, no backend involved), or None."""
        origin = request.headers.get("Origin")
        if not origin or "Access-Control-Request-Method" not in request.headers:
            return None
        if not origin_allowed(origin, self.origins):
            return web.Response(status=403, text="origin not allowed")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", CORS_HEADERS
                ),
                "Access-Control-Max-Age": "43200",
                "Vary": "Origin",
            },
        )


# -- errors ---------------------------------------------------------------------------

# The response a request has started, set as it is prepared (``Edge.on_prepare``): after
# that, an error can only end the stream, never replace it.
STARTED = web.RequestKey("started", web.StreamResponse)


async def _answer(request: web.Request, error: ProxyError) -> web.StreamResponse:
    access.refused(request, error)
    match = request.get(MATCH)
    shape = shape_of(match.path if match is not None else request.path)
    started: web.StreamResponse | None = request.get(STARTED)
    if started is None:
        return render(error, shape)
    # A second status line inside a started body would corrupt it: end the stream the
    # way Ollama ends a failed one, or cut the connection when the body cannot say so.
    content_type = started.headers.get("Content-Type", "")
    streaming = content_type.startswith(("application/x-ndjson", "text/event-stream"))
    if streaming and started.headers.get("Transfer-Encoding") == "chunked":
        sse = content_type.startswith("text/event-stream")
        with contextlib.suppress(ConnectionError):
            await started.write(stream_error_line(error.message, shape, sse=sse))
            await started.write_eof()
    elif request.transport is not None:
        request.transport.close()
    return started


# -- CORS -----------------------------------------------------------------------------

# Ollama's default OLLAMA_ORIGINS: local pages and desktop/editor webviews.
DEFAULT_ORIGINS = (
    "http://localhost",
    "https://localhost",
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1",
    "https://127.0.0.1",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://0.0.0.0",
    "https://0.0.0.0",
    "http://0.0.0.0:*",
    "https://0.0.0.0:*",
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
CORS_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, X-Room-Id, "
    "X-Api-Key, Anthropic-Version, Anthropic-Beta, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Retry-Count, X-Stainless-Runtime, X-Stainless-Runtime-Version, "
    "X-Stainless-Async, X-Stainless-Helper-Method, X-Stainless-Poll-Helper, "
    "X-Stainless-Custom-Poll-Interval, X-Stainless-Timeout, OpenAI-Beta"
)


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(origin, p) for p in patterns)
