"""How a Go program writes to the wire, for the Ollama simulator.

Ollama marshals with Go's ``encoding/json``: no spaces, ``<``, ``>`` and ``&`` escaped as
``\\u003c`` and friends, raw UTF-8 otherwise; ``created_at`` is ``time.Now().UTC()`` in
RFC3339Nano (trailing zeros of the fraction dropped); ``keep_alive`` is an ``api.Duration``.
Gin answers errors as ``{"error": "..."}``. Everything here is pure and cheap, because the
simulator calls some of it once per streamed token.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

from aiohttp import web

JSON_UTF8 = "application/json; charset=utf-8"  # gin's c.JSON
JSON = "application/json"  # json.NewEncoder writers, waitForStream, streamed errors
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT_UTF8 = "text/plain; charset=utf-8"

BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations "
    "or an internal error, check ollama server logs for details"
)

# Go's keep_alive < 0 means "never unload": time.Duration(math.MaxInt64).
FOREVER = math.inf
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
DEFAULT_KEEP_ALIVE = 300.0

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """``json.Marshal(value)``: compact, HTML-safe escapes; ``sort_keys`` for Go maps."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    text = text.translate(_GO_ESCAPES)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate escape in the request decodes to U+FFFD in Go.
        return _SURROGATE.sub("\ufffd", text).encode()


class Clock:
    """RFC3339Nano UTC stamps; the date part is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def stamp(self) -> bytes:
        sec, frac = divmod(time.time_ns(), 1_000_000_000)
        if sec != self._second:
            self._second = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        if not frac:
            return self._prefix + b"Z"
        return self._prefix + b"." + (b"%09d" % frac).rstrip(b"0") + b"Z"


CLOCK = Clock()


def rfc3339(wall: float) -> str:
    """A wall-clock time (seconds since the epoch) as Go prints a UTC ``time.Time``."""
    ns = int(wall * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    # time.gmtime stops at year 9999 on some platforms; Go's MaxInt64 horizon is 2262.
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(min(sec, 253402300799)))
    if not frac:
        return head + "Z"
    return f"{head}.{frac:09d}".rstrip("0") + "Z"


def canonical_name(name: str) -> str:
    """Ollama's short display name: ``library/x`` is ``x``, a missing tag is ``latest``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
    base, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return f"{name}:latest"
    return f"{base}:{tag}"


class Rejected(Exception):
    """A request refused before its first byte; the middleware renders it per API family."""

    def __init__(self, status: int, message: str, *, early: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # early: refused by the OpenAI middleware itself (gin's c.AbortWithStatusJSON)
        # rather than by the handler behind it, which changes the framing slightly.
        self.early = early


def reply(value: Any, *, status: int = 200, content_type: str = JSON_UTF8) -> web.Response:
    return web.Response(status=status, body=go_json(value), headers={"Content-Type": content_type})


def error_reply(status: int, message: str, *, content_type: str = JSON_UTF8) -> web.Response:
    return reply({"error": message}, status=status, content_type=content_type)


def go_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


async def read_object(request: web.Request, go_type: str) -> dict[str, Any]:
    """The JSON object body, or :class:`Rejected` with the text Go's decoder would give."""
    raw = await request.read()
    if not raw.strip():
        raise Rejected(400, "missing request body")
    try:
        value = json.loads(raw)
    except UnicodeDecodeError:
        raise Rejected(400, "invalid character looking for beginning of value") from None
    except json.JSONDecodeError as exc:
        doc = exc.doc
        if exc.pos >= len(doc.rstrip()):
            message = "unexpected EOF"
        else:
            message = f"invalid character '{doc[exc.pos]}' looking for beginning of value"
        raise Rejected(400, message) from None
    if not isinstance(value, dict):
        raise Rejected(
            400, f"json: cannot unmarshal {go_kind(value)} into Go value of type {go_type}"
        )
    return value


_GO_TYPES = {str: "string", bool: "bool", int: "int", float: "float64", list: "[]", dict: "map"}


def field(body: dict[str, Any], key: str, kind: type, struct: str) -> Any:
    """``body[key]`` if it has the JSON type Go expects, ``None`` when absent or null."""
    value = body.get(key)
    if value is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is int:
        ok = not isinstance(value, bool) and (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        )
        value = int(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise Rejected(
            400,
            f"json: cannot unmarshal {go_kind(value)} into Go struct field "
            f"{struct}.{key} of type {_GO_TYPES.get(kind, kind.__name__)}",
        )
    return value


def stream_flag(body: dict[str, Any], struct: str) -> bool:
    """``stream`` is a ``*bool`` in Go: absent or null means true."""
    value = field(body, "stream", bool, struct)
    return True if value is None else bool(value)


def text(body: dict[str, Any], key: str, go_type: str) -> str:
    value = field(body, key, str, go_type)
    return value if isinstance(value, str) else ""


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNITS |= {"m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _parse_go_duration(value: str) -> float:
    """``time.ParseDuration`` in seconds."""
    body = value
    sign = 1.0
    if body.startswith(("+", "-")):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise Rejected(400, f'time: invalid duration "{value}"')
    return sign * total


def keep_alive_seconds(value: object) -> float | None:
    """``api.Duration`` in seconds: ``None`` when absent, ``FOREVER`` when negative."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Rejected(400, f"Unsupported type: '{_go_type_name(value)}'")
    seconds = _parse_go_duration(value) if isinstance(value, str) else float(value)
    if seconds < 0:
        return FOREVER
    return seconds


def _go_type_name(value: object) -> str:
    return {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}.get(
        type(value), "string"
    )


def think_value(value: object) -> bool | str | None:
    """``api.ThinkValue``: a bool or one of the effort levels."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in ("high", "medium", "low", "max"):
            raise Rejected(
                400,
                f'invalid think value: "{value}" (must be "high", "medium", "low", "max", '
                "true, or false)",
            )
        return value
    raise Rejected(
        400, 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


_PRIVATE = [ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _split_host(host: str) -> str:
    # net.SplitHostPort, falling back to the whole value when it has no port.
    if host.startswith("["):
        end = host.find("]:")
        return host[1:end] if end > 0 else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def allowed_host(header: str) -> bool:
    """Ollama's ``allowedHostsMiddleware`` for a server bound to a loopback address."""
    host = _split_host(header)
    addr: IPv4Address | IPv6Address | None
    try:
        addr = ip_address(host)
    except ValueError:
        addr = None
    if addr is not None and (
        addr.is_loopback or addr.is_unspecified or any(addr in n for n in _PRIVATE)
    ):
        return True
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith(_LOCAL_SUFFIXES)
