"""The one error hierarchy of olbproxy; every class knows its HTTP status.

    ProxyError                     500  anything we did not foresee
    ├── ConfigError                     bad configuration (never reaches HTTP; exit status 2)
    ├── StartupError                    cannot start: port taken, spool held (exit status 1)
    ├── BadRequest                 400  malformed JSON, wrong types, missing model
    │   ├── PayloadTooLarge        413  body over the configured limit
    │   ├── RequestTimeout         408  the client sent its body too slowly
    │   └── UnsupportedMediaType   415  a compressed request body
    ├── Unauthorized               401  missing, invalid or expired credentials
    ├── Forbidden                  403  authenticated, but not allowed
    ├── NotFound                   404
    │   └── ModelNotFound          404  no group serves the model (Ollama's own words)
    ├── MethodNotAllowed           405
    ├── Conflict                   409  e.g. a username that is taken
    ├── TooManyRequests            429  login throttling (Retry-After)
    └── UpstreamError              502  a backend failed in a way we cannot hide
        ├── Unavailable            503  no healthy backend, queue full or wait over (Retry-After)
        └── UpstreamTimeout        504  no first byte within the group's timeout

Handlers raise; one place (``edge.Edge.dispatch``) renders with ``render()``,
in Ollama's shape ``{"error": "..."}``, on ``/v1/*`` in OpenAI's shape as Ollama's
compatibility layer does, and on ``/v1/messages`` in Anthropic's. After a response has
started nothing is rendered: the stream ends with a final error line instead
(``stream_error_line``).
"""

from __future__ import annotations

import json
from typing import Literal

from aiohttp import web


class ProxyError(Exception):
    status = 500
    openai_type = "api_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Retry-After takes whole seconds; round up so clients never retry too early.
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}


class ConfigError(ProxyError):
    """A configuration problem; the message names the file and the key."""


class StartupError(ProxyError):
    """The proxy cannot start for a reason outside its config (a port another program
    holds, a spool another proxy holds); the message says what to do."""


class BadRequest(ProxyError):
    status = 400
    openai_type = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    status = 413


class RequestTimeout(BadRequest):
    status = 408


class UnsupportedMediaType(BadRequest):
    status = 415


class Unauthorized(ProxyError):
    status = 401
    openai_type = "authentication_error"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="olbproxy"'}


class Forbidden(ProxyError):
    status = 403
    openai_type = "permission_error"


class NotFound(ProxyError):
    status = 404
    openai_type = "not_found_error"


class ModelNotFound(NotFound):
    def __init__(self, model: str) -> None:
        # Ollama's exact text, so clients that match on it keep working.
        super().__init__(f"model '{model}' not found")
        self.model = model


class MethodNotAllowed(ProxyError):
    status = 405
    openai_type = "invalid_request_error"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class Conflict(ProxyError):
    status = 409
    openai_type = "invalid_request_error"


class TooManyRequests(ProxyError):
    status = 429
    openai_type = "rate_limit_error"


class UpstreamError(ProxyError):
    status = 502


# What a client is told to wait before trying again when no instance can take it now.
RETRY_AFTER = 5.0


class Unavailable(UpstreamError):
    """503 with Retry-After (``RETRY_AFTER`` unless the cause knows better)."""

    status = 503

    def __init__(self, message: str, *, retry_after: float | None = RETRY_AFTER) -> None:
        super().__init__(message, retry_after=retry_after)


class UpstreamTimeout(UpstreamError):
    status = 504


# The error shape a client expects: Ollama's own, OpenAI's on /v1 (as Ollama's
# compatibility layer writes it), Anthropic's on /v1/messages.
Shape = Literal["ollama", "openai", "anthropic"]

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def shape_of(path: str) -> Shape:
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "ollama"


def _payload(message: str, status: int, openai_type: str, shape: Shape) -> dict[str, object]:
    if shape == "openai":
        return {"error": {"message": message, "type": openai_type, "param": None, "code": None}}
    if shape == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": message}


def error_body(error: ProxyError, shape: Shape = "ollama") -> dict[str, object]:
    return _payload(error.message, error.status, error.openai_type, shape)


def render(error: ProxyError, shape: Shape = "ollama") -> web.Response:
    """The single place where an error becomes an HTTP response."""
    return web.Response(
        status=error.status,
        body=json.dumps(error_body(error, shape)).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=error.headers(),
    )


def stream_error_line(message: str, shape: Shape = "ollama", *, sse: bool) -> bytes:
    """The last line of a stream that failed after its first byte, as Ollama writes it:
    an NDJSON ``{"error"}`` line, or an SSE error frame on the compatibility layers."""
    if not sse:
        return json.dumps({"error": message}).encode() + b"\n"
    body = json.dumps(_payload(message, 500, "api_error", shape)).encode()
    if shape == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"
