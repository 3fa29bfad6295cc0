"""The access log: one line per exchange, refusal, login and sign-up, as the operator reads
it on stderr (text or JSON lines), written through the same logging setup as `serve`."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import StartProxy, StartSims
from hypothesis import given
from hypothesis import strategies as st
from identity import CHAT, PASSWORD, Site, basic, bearer, site_settings

from olbproxy import access, logs
from olbproxy.access import AccessLog
from olbproxy.exchange import Exchange, Placed
from olbproxy.logs import Logs
from olbproxy.settings import LogFormat

STREAM = {**CHAT, "stream": True}


class Captured:
    """The process's log as `serve` writes it: through logs.py's queue and thread, with
    no other handler listening (pytest's capture is set aside meanwhile), so access lines
    take the way they take in `serve` (logs.direct)."""

    def __init__(self, log_format: LogFormat) -> None:
        self.stream = io.StringIO()
        root = logging.getLogger()
        self.others = list(root.handlers)
        for handler in self.others:
            root.removeHandler(handler)
        self.logs = Logs("INFO", log_format, self.stream)
        self.logs.start()

    def stop(self) -> None:
        self.logs.stop()  # flushes the queue
        root = logging.getLogger()
        for handler in self.others:
            root.addHandler(handler)
        self.others = []

    def lines(self) -> list[str]:
        self.stop()
        return self.stream.getvalue().splitlines()

    def access(self) -> list[str]:
        return [line for line in self.lines() if "olbproxy.access" in line]

    def records(self) -> list[dict[str, str]]:
        """The access lines as field -> value (as text), whichever the format."""
        found = []
        for line in self.access():
            if line.startswith("{"):
                data = json.loads(line)
                found.append({k: str(v) for k, v in data.items()})
            else:
                pairs = PAIR.findall(line.split("olbproxy.access: ", 1)[1])
                found.append({k: json.loads(v) if v[0] == '"' else v for k, v in pairs})
        return found


# key=value, the value plain or JSON-quoted.
PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


# Starts a site whose log is captured: started(log_format="text", **auth).
Started = Callable[..., Awaitable[tuple[Site, Captured]]]


@pytest.fixture
async def started(start_sims: StartSims, start_proxy: StartProxy) -> AsyncIterator[Started]:
    captured: list[Captured] = []

    async def start(log_format: LogFormat = "text", **auth: Any) -> tuple[Site, Captured]:
        capture = Captured(log_format)
        captured.append(capture)
        small, large = await start_sims(2, tokens_per_second=0, answer_tokens=5)
        settings = replace(site_settings(small, large, None, **auth), log_format=log_format)
        return Site(await start_proxy(settings), small, large), capture

    yield start
    for capture in captured:
        capture.logs.stop()  # pytest's handlers of the test's phase are gone by now


def fields(line: str) -> dict[str, str]:
    """``key=value`` pairs of a text line (values here have no spaces)."""
    message = line.split("olbproxy.access: ", 1)[1]
    return dict(part.split("=", 1) for part in message.split(" ") if "=" in part)


async def chat_with_key(site: Site, body: dict[str, Any]) -> tuple[str, str]:
    await site.accounts.add_user("kim", PASSWORD, groups=frozenset({"20b"}))
    record, key = await site.accounts.create_key("kim", label="cli")
    async with site.proxy.http.post(site.url + "/api/chat", json=body, headers=bearer(key)) as r:
        assert r.status == 200
        await r.read()
    return record.id, key


async def test_an_exchange_is_one_text_line_with_who_what_where_and_how_long(
    started: Started,
) -> None:
    site, log = await started("text")
    key_id, key = await chat_with_key(site, STREAM)
    lines = log.access()
    assert len(lines) == 1
    line = fields(lines[0])
    assert line["event"] == "exchange"
    assert (line["client"], line["user"], line["key"]) == ("127.0.0.1", "kim", key_id)
    assert (line["method"], line["route"], line["model"]) == ("POST", "/api/chat", "gpt-oss:20b")
    assert (line["group"], line["instance"]) == ("20b", site.small.url.removeprefix("http://"))
    assert (line["status"], line["outcome"]) == ("200", "done")
    assert line["output_tokens"] == "5" and int(line["prompt_tokens"]) > 0
    assert int(line["bytes_in"]) == len(json.dumps(STREAM))
    assert int(line["bytes_out"]) > 0
    for name in ("queue_ms", "ttft_ms", "duration_ms"):
        assert int(line[name]) >= 0
    assert key not in "\n".join(log.lines())  # the key itself is never logged


async def test_an_exchange_is_one_json_object_per_line(started: Started) -> None:
    site, log = await started("json")
    key_id, _ = await chat_with_key(site, CHAT)
    objects = [json.loads(line) for line in log.lines()]  # every line is JSON, not only access
    (line,) = [o for o in objects if o["logger"] == "olbproxy.access"]
    assert line["event"] == "exchange" and line["level"] == "INFO"
    assert line["time"].endswith("Z")
    assert (line["user"], line["key"], line["route"]) == ("kim", key_id, "/api/chat")
    assert (line["status"], line["outcome"], line["output_tokens"]) == (200, "done", 5)
    assert isinstance(line["duration_ms"], int) and isinstance(line["bytes_out"], int)


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_refusals_are_logged_once_each_with_their_reason(
    started: Started, log_format: LogFormat
) -> None:
    site, log = await started(log_format)
    await site.accounts.add_user("kim", PASSWORD, groups=frozenset({"20b"}))
    token = await site.token("kim")
    http = site.proxy.http
    async with http.post(site.url + "/api/chat", json=CHAT) as r:  # no credentials
        assert r.status == 401
    big = {**CHAT, "model": "gpt-oss:120b"}
    async with http.post(site.url + "/api/chat", json=big, headers=bearer(token)) as r:
        assert r.status == 403
    unknown = {**CHAT, "model": "nope:1b"}
    async with http.post(site.url + "/api/chat", json=unknown, headers=bearer(token)) as r:
        assert r.status == 404
    async with http.post(site.url + "/api/chat", data=b"{", headers=bearer(token)) as r:
        assert r.status == 400
    refusals = [line for line in log.records() if line["event"] == "refused"]
    assert [(r["status"], r["user"]) for r in refusals] == [
        ("401", "-"),
        ("403", "kim"),
        ("404", "kim"),
        ("400", "kim"),
    ]
    assert all(r["outcome"] == "refused" and r["route"] == "/api/chat" for r in refusals)
    assert refusals[0]["reason"].startswith("authentication required: send Authorization")
    assert refusals[1]["reason"] == "you may not use model 'gpt-oss:120b' (group '120b')"
    assert refusals[2]["reason"] == "model 'nope:1b' not found"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_logins_are_logged_without_their_passwords(
    started: Started, log_format: LogFormat
) -> None:
    site, log = await started(log_format, login_attempts=2)
    await site.accounts.add_user("kim", PASSWORD)
    url = site.url + "/api/auth/login"
    async with site.proxy.http.post(url, json={"username": "kim", "password": PASSWORD}) as r:
        assert r.status == 200
        token = (await r.json())["token"]
    wrong = {"username": "kim", "password": "wrong-password-1"}
    for expected in (401, 401, 429):
        async with site.proxy.http.post(url, json=wrong) as r:
            assert r.status == expected
    signup = {"username": "lee", "password": "a-new-password"}
    async with site.proxy.http.post(site.url + "/api/auth/register", json=signup) as r:
        assert r.status == 201
    async with site.proxy.http.post(site.url + "/api/auth/register", json=signup) as r:
        assert r.status == 409
    output = "\n".join(log.lines())
    lines = log.records()
    assert [(o["event"], o["user"], o["status"], o["outcome"]) for o in lines] == [
        ("login", "kim", "200", "ok"),
        ("login", "kim", "401", "refused"),
        ("login", "kim", "401", "refused"),
        ("login", "kim", "429", "refused"),
        ("signup", "lee", "201", "ok"),
        ("signup", "lee", "409", "refused"),
    ]
    assert (lines[0]["client"], lines[0]["tls"]) == ("127.0.0.1", "no")
    assert lines[1]["reason"] == "invalid username or password"
    for secret in (PASSWORD, "wrong-password-1", "a-new-password", token):
        assert secret not in output
    # From this machine, plain HTTP is no risk: no warning.
    assert "WARNING" not in output


async def test_a_sign_up_refused_before_its_body_is_read_is_still_a_sign_up(
    started: Started,
) -> None:
    site, log = await started("text", registration="closed")
    signup = {"username": "eve", "password": "a-new-password"}
    async with site.proxy.http.post(site.url + "/api/auth/register", json=signup) as r:
        assert r.status == 403
    (line,) = [fields(line) for line in log.access()]
    assert (line["event"], line["user"], line["status"]) == ("signup", "-", "403")


async def test_basic_auth_with_a_password_gets_a_hint_to_use_a_key(
    started: Started,
) -> None:
    site, log = await started("text")
    await site.accounts.add_user("kim", PASSWORD)
    async with site.proxy.http.get(site.url + "/api/tags", headers=basic("kim", PASSWORD)) as r:
        assert r.status == 401
        message = (await r.json())["error"]
    assert message.startswith("HTTP Basic takes an API key (olb_...) as the password")
    assert PASSWORD not in "\n".join(log.lines())


def test_a_login_over_plain_http_from_another_machine_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = _Transport(("192.168.1.20", 51000))
    request = make_mocked_request("POST", "/api/auth/login", transport=transport)
    log = AccessLog()
    with caplog.at_level(logging.INFO, logger="olbproxy.access"):
        log.account(request, "login", "kim", 200)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        "login of kim from 192.168.1.20 over plain HTTP: the password crossed the network "
        "unencrypted"
    )


def test_values_a_client_chose_cannot_start_a_new_line() -> None:
    fields = {"route": "/api/x\nevent=login user=root", "user": "kim", "status": 404}
    assert access._text(fields) == 'route="/api/x\\nevent=login user=root" user=kim status=404'
    assert access._text({"user": "김" * 300}) == f'user="{"김" * 200}..."'


EDGES = ' \t\n"=\\!#<>[]~\x7f\x85\xa0\u2028\u3000김a0'


@given(st.text(st.sampled_from(EDGES) | st.characters(codec="utf-8"), max_size=220))
def test_a_value_is_quoted_exactly_when_it_has_a_space_a_quote_an_equals_or_a_backslash(
    value: str,
) -> None:
    # The rule as first written, one character at a time; the line's fast path must agree.
    special = set(' \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"=\\')
    plain = bool(value) and len(value) <= 200 and value.isprintable() and not special & set(value)
    line = access._text({"user": value})
    assert (line == f"user={value}") is plain
    if not plain:
        assert line.startswith('user="') and "\n" not in line


_NAMES = st.text(st.sampled_from(EDGES) | st.characters(codec="utf-8"), max_size=220)
_COUNTS = st.none() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | _NAMES


@given(
    head=st.tuples(
        st.none() | st.sampled_from(["127.0.0.1", "::1"]) | _NAMES,  # client
        st.sampled_from(["kim", "anonymous"]) | _NAMES,  # user
        st.none() | st.sampled_from(["3fa9c2d41b7e"]) | _NAMES,  # key
        st.sampled_from(["POST", "GET"]),
        st.sampled_from(["/api/chat", "/v1/chat/completions"]),
        st.none() | st.sampled_from(["gpt-oss:20b"]) | _NAMES,  # model
        st.none() | st.sampled_from(["20b"]) | _NAMES,  # group
        st.none() | st.sampled_from(["127.0.0.1:11435"]),  # instance
        st.none() | st.sampled_from(["", "sticky", "resident"]),  # placement
        st.integers(0, 599),
        st.sampled_from(["pending", "done", "cancelled", "error"]),
        st.none() | _NAMES,  # error
    ),
    times=st.tuples(
        st.floats(0, 1e4), st.none() | st.floats(0, 1e4), st.none() | st.floats(0, 1e4)
    ),
    counts=st.tuples(_COUNTS, _COUNTS),
    chunks=st.lists(st.binary(max_size=40), max_size=3),
)
def test_an_exchange_line_is_the_line_of_its_fields(
    head: tuple[Any, ...], times: tuple[Any, ...], counts: tuple[Any, ...], chunks: list[bytes]
) -> None:
    # The line every request writes is made by a faster road than other lines (its
    # fields' text kept by their values); it must be the same text, repeats included.
    client, user, key, method, route, model, group, instance, placement, status = head[:10]
    exchange = Exchange(endpoint=route, model=model, group=group, user_name=user,
                        client=client, key_id=key, method=method, bytes_in=len(route))  # fmt: skip
    exchange.backend, exchange.status, exchange.outcome, exchange.error = (
        instance,
        status,
        head[10],
        head[11],
    )
    exchange.placed = Placed(placement) if placement is not None else None
    queue, ttft, duration = times
    exchange.queue_wait = queue
    exchange.first_byte = None if ttft is None else exchange.t0 + ttft
    exchange.ended = None if duration is None else exchange.t0 + duration
    exchange.counters = {"prompt_eval_count": counts[0], "eval_count": counts[1]}
    exchange.chunks = chunks
    for _ in range(2):  # the first time makes the kept text, the second uses it
        for reason in (exchange.error, None):
            expected = access._text(access.exchange_fields(exchange, reason))
            assert access._exchange_text(exchange, reason) == expected


class _Transport:
    """Just enough of a transport for ``request.remote``."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


FIELDS_OF_A_LINE = {
    "event": "exchange",
    "user": "kim lee",  # quoted in text
    "key": None,  # left out
    "route": "/api/chat",
    "status": 200,
    "reason": 'a "quoted" reason\nwith a line break',
}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_access_line_written_directly_is_the_line_logging_would_write(
    log_format: LogFormat,
) -> None:
    """logs.direct skips the LogRecord; the line must be the same, byte for byte."""
    stream = io.StringIO()
    captured = Captured(log_format)
    try:
        batcher = logs.direct(logging.getLogger("olbproxy.access"))
        assert batcher is not None  # only our batcher listens: the direct way
        formatter = batcher.formatter
        assert formatter is not None
        line = AccessLog(json_format=log_format == "json")
        line.write(FIELDS_OF_A_LINE)
    finally:
        direct_lines = captured.lines()
    # The same fields through a LogRecord and the same formatter.
    present = {k: v for k, v in FIELDS_OF_A_LINE.items() if v is not None}
    message = str(present["event"]) if log_format == "json" else access._text(FIELDS_OF_A_LINE)
    record = logging.LogRecord("olbproxy.access", logging.INFO, "x", 0, message, (), None)
    if log_format == "json":
        setattr(record, logs.FIELDS, present)
    stream.write(formatter.format(record))
    (written,) = [x for x in direct_lines if "olbproxy.access" in x]
    expected = stream.getvalue()
    # Only the time stamps may differ (two moments): compare what follows them.
    if log_format == "json":
        got, want = json.loads(written), json.loads(expected)
        assert got.pop("time").endswith("Z") and want.pop("time").endswith("Z")
        assert got == want
    else:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", written)
        assert written.split(" ", 2)[2] == expected.split(" ", 2)[2]


def test_another_listener_still_gets_access_records(caplog: pytest.LogCaptureFixture) -> None:
    """With anything else listening (here pytest's capture), lines go as LogRecords."""
    stream = io.StringIO()
    ours = Logs("INFO", "text", stream)
    ours.start()
    try:
        with caplog.at_level(logging.INFO, logger="olbproxy.access"):
            assert logs.direct(logging.getLogger("olbproxy.access")) is None
            AccessLog().write(FIELDS_OF_A_LINE)
    finally:
        ours.stop()
    (record,) = [r for r in caplog.records if r.name == "olbproxy.access"]
    assert record.getMessage().startswith('event=exchange user="kim lee" route=/api/chat')
    assert "olbproxy.access: event=exchange" in stream.getvalue()  # and in our log too


def test_clients_that_come_and_go_never_grow_the_kept_line_heads_past_their_bound() -> None:
    exchange = Exchange(endpoint="/api/chat", model="gpt-oss:20b", group="20b", user_name="kim")
    exchange.backend, exchange.status, exchange.outcome = "127.0.0.1:11435", 200, "done"
    exchange.placed = Placed("resident")
    for n in range(access._HEADS_MAX + 500):
        exchange.client = f"10.0.{n // 256}.{n % 256}"
        line = access._exchange_text(exchange, None)
        assert line == access._text(access.exchange_fields(exchange, None))
        assert len(access._HEADS) <= access._HEADS_MAX
    # The current clients' text is kept: the heads start afresh rather than freezing.
    heads = [access._HEADS.get(values) for values in access._HEADS]
    assert any(f"client={exchange.client} " in head for head in heads if head)
