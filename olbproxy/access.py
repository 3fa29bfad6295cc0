"""The access log: one line per model exchange, refusal, login and sign-up.

What the person running the proxy reads to answer "who used the 120b model at 3 pm,
and why was it slow?". Lines go to the ``olbproxy.access`` logger, which logs.py
writes from a thread, as text (``key=value``, easy to grep) or as JSON lines::

    event=exchange client=192.168.1.20 user=kim key=3fa9c2d41b7e method=POST route=/api/chat
      model=gpt-oss:20b group=20b instance=127.0.0.1:11435 status=200 outcome=done
      queue_ms=0 ttft_ms=412 duration_ms=3201 prompt_tokens=35 output_tokens=120
      bytes_in=512 bytes_out=20480
    event=refused client=192.168.1.31 user=- method=POST route=/api/chat status=401
      outcome=refused reason="authentication required: ..."
    event=login client=192.168.1.20 user=kim status=200 outcome=ok tls=no

(one line each in the log). Where they come from:

* **exchanges**: ``AccessLog.observe`` is one of ``OllamaApi.observers``; it runs once,
  after the exchange has ended, and builds the whole line then, never per chunk;
* **refusals**: ``refused(request, error)``, called by the edge for every error it
  renders (4xx: ``refused``, 5xx: ``error``), unless the exchange's own line
  already tells it;
* **logins and sign-ups**: ``login`` / ``signup`` from accounts.py when they succeed; a
  failed one is a refusal whose line names the attempted user (``attempt``).

Never logged: passwords, tokens, API keys (only a key's public id), message content.
A login or sign-up over plain HTTP from another machine also logs a warning: the
password crossed the network readable (serve TLS, see tls.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
from typing import Any

from aiohttp import web

from olbproxy.auth.principal import PRINCIPAL
from olbproxy.cache import Bounded
from olbproxy.errors import ProxyError
from olbproxy.exchange import EXCHANGE, Exchange
from olbproxy.logs import FIELDS, direct

log = logging.getLogger("olbproxy.access")

# Values a client chose (paths, usernames) are cut to this many characters.
_VALUE_MAX = 200
# The username a login or sign-up tried, for the line of its refusal.
_ATTEMPT: web.RequestKey[tuple[str, str]] = web.RequestKey("access_attempt")


# Characters that make a value need quoting: whitespace, quotes, '=' and backslashes
# (a set test is faster than a regular expression on these short values).
_SPECIAL = frozenset(' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"=\\')


def _text(fields: dict[str, Any]) -> str:
    """``key=value ...`` (None values left out); strings a client could have chosen are
    quoted when needed."""
    # One comprehension, integers inline: a fifth faster than a loop of appends.
    return " ".join(
        [
            f"{key}={value}" if type(value) is int else f"{key}={_value(value)}"
            for key, value in fields.items()
            if value is not None
        ]
    )


def _value(value: Any) -> str:
    text = str(value)
    # Not isprintable() catches the other Unicode spaces (U+2028, U+3000, ...).
    if text and len(text) <= _VALUE_MAX and text.isprintable() and _SPECIAL.isdisjoint(text):
        return text
    return _quoted(text)


def exchange_fields(exchange: Exchange, reason: str | None) -> dict[str, Any]:
    """The fields of an exchange's line (``reason``: why it failed, if it did)."""
    placed = exchange.placed
    counters = exchange.counters
    return {
        "event": "exchange",
        "client": exchange.client,
        "user": exchange.user_name,
        "key": exchange.key_id,
        "method": exchange.method,
        "route": exchange.endpoint,
        "model": exchange.model,
        "group": exchange.group,
        "instance": exchange.backend,
        "placement": placed.reason or None if placed is not None else None,
        "status": exchange.status or None,
        "outcome": exchange.outcome,
        "reason": reason,
        "queue_ms": _ms(exchange.queue_wait),
        "ttft_ms": _ms(exchange.ttft),
        "duration_ms": _ms(exchange.duration),
        "prompt_tokens": counters.get("prompt_eval_count"),
        "output_tokens": counters.get("eval_count"),
        "bytes_in": exchange.bytes_in,
        "bytes_out": sum(map(len, exchange.chunks)),
    }


def _exchange_text(e: Exchange, reason: str | None) -> str:
    """``_text(exchange_fields(e, reason))``, the line of an exchange, made faster.

    Every request writes one, and the dict and ``_text`` cost more than the rest of the
    line's way to the log. Its fields before the numbers (who, what, where, how it
    ended) repeat from one request to the next: their text is kept by their values
    (``_HEADS``) and only the numbers are formatted per line (callgrind: 15,800
    instructions a line, against 46,000). A line with a number absent or odd (no first
    byte, a count that is not an integer) is made the general way."""
    placed = e.placed
    values = (
        e.client,
        e.user_name,
        e.key_id,
        e.method,
        e.endpoint,
        e.model,
        e.group,
        e.backend,
        placed.reason or None if placed is not None else None,
        e.status or None,
        e.outcome,
        reason,
    )
    head = _HEADS.get(values)
    fields = None
    if head is None:
        fields = exchange_fields(e, reason)
        head = _text(dict(itertools.islice(fields.items(), _HEAD_FIELDS)))
        # Not kept: a failure's reason, or a value too long or odd to show unquoted (so
        # every string kept is at most _VALUE_MAX characters).
        if reason is None and '"' not in head:
            _HEADS.put(values, head)
    t0, first, ended, chunks = e.t0, e.first_byte, e.ended, e.chunks
    get = e.counters.get
    prompt, output = get("prompt_eval_count"), get("eval_count")
    if first is None or ended is None or type(prompt) is not int or type(output) is not int:
        return _text(fields if fields is not None else exchange_fields(e, reason))
    out = len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))
    return (
        f"{head} queue_ms={round(e.queue_wait * 1000)} ttft_ms={round((first - t0) * 1000)}"
        f" duration_ms={round((ended - t0) * 1000)} prompt_tokens={prompt}"
        f" output_tokens={output} bytes_in={e.bytes_in} bytes_out={out}"
    )


# ``exchange_fields``' first thirteen, "event" to "reason": the head of the line.
_HEAD_FIELDS = 13
# Their text, by the values in the order ``_exchange_text`` takes them: strings and
# ints only, so no two keys are equal unless their text is (``True == 1`` cannot arise:
# statuses are ints, never booleans). Bounded: a client inventing model names, or
# clients that come and go, cannot grow it.
_HEADS_MAX = 4096
_HEADS: Bounded[tuple[str | int | None, ...], str] = Bounded(_HEADS_MAX)


def _quoted(text: str) -> str:
    if len(text) > _VALUE_MAX:
        text = text[:_VALUE_MAX] + "..."
    # JSON's escapes: a path or a name can never start a new line of the log.
    return json.dumps(text, ensure_ascii=False)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False  # a Unix socket or an unknown peer: assume it is not this machine
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class AccessLog:
    """Builds and writes access lines; ``enabled`` false keeps only the TLS warning."""

    def __init__(self, *, enabled: bool = True, json_format: bool = False) -> None:
        self.enabled = enabled
        self.json_format = json_format

    def write(self, fields: dict[str, Any]) -> None:
        """One line from ``fields`` (None values are left out), formatted once."""
        if not self.enabled or not log.isEnabledFor(logging.INFO):
            return
        if self.json_format:
            present = {k: v for k, v in fields.items() if v is not None}
            self._emit(str(present.get("event")), present)
        else:
            self._emit(_text(fields), None)

    def _emit(self, message: str, present: dict[str, Any] | None) -> None:
        """The line (``present``: its fields, for JSON lines) to the log."""
        batcher = direct(log)
        if batcher is not None:
            batcher.info(log.name, message, present)
            return
        # makeRecord + handle, not log.info: info() looks up its caller's frame, which
        # here would cost more than building the whole line.
        extra = {FIELDS: present} if present is not None else None
        log.handle(
            log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None, extra=extra)
        )

    # -- the three sources ---------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        """An ``OllamaApi`` observer: the line of a finished model exchange."""
        if not self.enabled:
            return
        reason = exchange.error
        if reason is None and exchange.outcome == "error" and exchange.status >= 400:
            reason = f"the backend answered {exchange.status}"
        if self.json_format or not log.isEnabledFor(logging.INFO):
            self.write(exchange_fields(exchange, reason))
        else:
            self._emit(_exchange_text(exchange, reason), None)

    def refusal(self, request: web.Request, error: ProxyError) -> None:
        exchange = request.get(EXCHANGE)
        if exchange is not None and exchange.ended is not None:
            return  # the exchange's own line has told it
        attempt = request.get(_ATTEMPT)
        principal = request.get(PRINCIPAL)
        if principal is not None and principal.via == "anonymous":
            principal = None  # a public path: nobody has said who they are
        user = attempt[1] if attempt else principal.name if principal is not None else None
        self.write(
            {
                "event": attempt[0] if attempt else "refused",
                "client": request.remote,
                "user": user or "-",
                "key": principal.key_id if principal is not None else None,
                "method": request.method,
                "route": request.path,
                "status": error.status,
                "outcome": "refused" if error.status < 500 else "error",
                "reason": error.message,
            }
        )

    def account(self, request: web.Request, event: str, username: str, status: int) -> None:
        plain = not request.secure and not _is_loopback(request.remote)
        if plain:
            log.warning(
                "%s of %s from %s over plain HTTP: the password crossed the network "
                "unencrypted; set tls_cert and tls_key, or put a TLS front before the proxy",
                event,
                username,
                request.remote,
            )
        self.write(
            {
                "event": event,
                "client": request.remote,
                "user": username,
                "method": request.method,
                "route": request.path,
                "status": status,
                "outcome": "ok",
                "tls": "no" if not request.secure else "yes",
            }
        )


ACCESS = web.AppKey("ACCESS", AccessLog)


# -- the hooks other modules call (each one line where it is called) ----------------------


def refused(request: web.Request, error: ProxyError) -> None:
    """From the edge: the line of an error response it is about to render."""
    access = request.app.get(ACCESS)
    if access is not None:
        access.refusal(request, error)


def attempt(request: web.Request, event: str, username: object) -> None:
    """A login or sign-up is about to be checked: its refusal names ``username``."""
    request[_ATTEMPT] = (event, username if isinstance(username, str) else "-")


def login(request: web.Request, username: str) -> None:
    access = request.app.get(ACCESS)
    if access is not None:
        access.account(request, "login", username, 200)


def signup(request: web.Request, username: str) -> None:
    access = request.app.get(ACCESS)
    if access is not None:
        access.account(request, "signup", username, 201)
