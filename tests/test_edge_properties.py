"""Properties of the edge, over generated requests (Hypothesis).

The proxy runs in a thread of its own, with authentication on, in front of recording
simulators: two for the 20b group, one for the 120b group. Generated requests (path
spellings, methods, content types, case-variant keys, malformed bodies) go to it over
raw sockets from an ordinary user limited to 20b, or with no credentials. Whatever they
are, these hold:

* no management, account or experimental request reaches any backend;
* nothing reaches a backend of a group the caller may not use;
* what reaches a backend is a known route on its canonical path, with the body exactly
  as the client sent it and none of the client's credentials;
* no answer is a 5xx.

``make test`` runs a fixed budget of examples, the same ones every time (the "ci"
profile); ``make test-properties`` runs many more, new ones each time ("long").
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pytest
import rawhttp
from aiohttp import web
from conftest import group, make_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity import PASSWORD, auth_settings

from olbproxy.app import AUTHENTICATOR, create_app
from olbproxy.health import USER_AGENT
from olbproxy.routing import normalise_model
from olbproxy.simulator import OllamaSimulator

settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Ollama's routes (and a few of ours) with the method each takes.
ROUTES = [
    ("/", "GET"),
    ("/api/version", "GET"),
    ("/api/tags", "GET"),
    ("/api/ps", "GET"),
    ("/api/show", "POST"),
    ("/api/generate", "POST"),
    ("/api/chat", "POST"),
    ("/api/embed", "POST"),
    ("/api/embeddings", "POST"),
    ("/api/pull", "POST"),
    ("/api/push", "POST"),
    ("/api/create", "POST"),
    ("/api/copy", "POST"),
    ("/api/delete", "DELETE"),
    ("/api/blobs/sha256:" + "a" * 64, "POST"),
    ("/api/me", "POST"),
    ("/api/signout", "POST"),
    ("/api/user/keys/abc", "DELETE"),
    ("/api/experimental/web_search", "POST"),
    ("/api/experimental/web_fetch", "POST"),
    ("/api/status", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/v1/embeddings", "POST"),
    ("/v1/models", "GET"),
    ("/v1/models/gpt-oss:120b", "GET"),
    ("/v1/responses", "POST"),
    ("/v1/messages", "POST"),
    ("/api/auth/login", "POST"),
    ("/api/rooms", "GET"),
    ("/metrics", "GET"),
]
# Paths only admins may have forwarded (and account/experimental ones: nobody, here).
FORBIDDEN = (
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs",
    "/api/me",
    "/api/signout",
    "/api/user/keys",
    "/api/experimental",
)
# What a backend may be asked on a user's behalf: these paths, on their canonical form.
FORWARDABLE = {
    "/api/show",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/ps",
    "/api/version",
    "/api/status",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/models/gpt-oss:20b",
}


@dataclass
class ThreadedSite:
    """A proxy and its simulators on an event loop in a thread of their own."""

    loop: asyncio.AbstractEventLoop
    url: str
    token: str  # kim: an ordinary user limited to the 20b group
    small: list[OllamaSimulator]
    large: list[OllamaSimulator]

    def requests_now(self) -> dict[str, int]:
        return {sim.name: len(sim.requests) for sim in (*self.small, *self.large)}

    def new_requests(self, before: dict[str, int]) -> list[tuple[OllamaSimulator, Any]]:
        found = []
        for sim in (*self.small, *self.large):
            for request in sim.requests[before[sim.name] :]:
                if request.headers.get("User-Agent") != USER_AGENT:  # health probes
                    found.append((sim, request))
        return found


@pytest.fixture(scope="module")
def threaded_site() -> Iterator[ThreadedSite]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="proxy-under-test", daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []
    sims: list[OllamaSimulator] = []

    async def start() -> ThreadedSite:
        for i in range(3):
            sim = OllamaSimulator(name=f"sim{i}", tokens_per_second=0)
            await sim.start()
            sims.append(sim)
        settings_ = make_settings(
            group("20b", ("gpt-oss:20b",), sims[:2]),
            group("120b", ("gpt-oss:120b",), sims[2:]),
            auth=auth_settings(),
        )
        app = await create_app(settings_)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        accounts = app[AUTHENTICATOR].accounts
        await accounts.add_user("kim", PASSWORD, groups=frozenset({"20b"}))
        token, _ = await accounts.issue_token("kim")
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return ThreadedSite(loop, url, token, sims[:2], sims[2:])

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()
        for sim in sims:
            await sim.stop()

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# -- strategies ------------------------------------------------------------------------

ESCAPES = ["%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%0a", "%09", "%25", "%70", "%20", "%zz"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """A route's method (mostly) and path, the path then bent out of shape a few times."""
    path, method = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "HEAD", "PUT", "PATCH"]))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        cut = draw(st.integers(0, len(path)))
        head, tail = path[:cut], path[cut:]
        path = draw(
            st.sampled_from(
                [
                    f"{head}/.{tail}",
                    f"{head}/x/..{tail}",
                    f"{head}/{tail}",
                    f"{head}\\{tail}",
                    head + draw(st.sampled_from(ESCAPES)) + tail,
                    head + tail.upper(),
                    "".join(f"%{ord(c):02X}" if c.isalnum() else c for c in path),
                    f"{path}/",
                    f"{path}?model=gpt-oss:120b&x=/api/pull",
                ]
            )
        )
    return method, path


# The model a body names: mostly the one the user may use, so that a second spelling of
# a key (naming another) has something to hide behind.
MODELS = st.sampled_from(["gpt-oss:20b", "gpt-oss:20b", "gpt-oss:120b", "gpt-oss", "nope"])
OTHER_MODELS = st.sampled_from(["gpt-oss:120b", "GPT-OSS:120B", "gpt-oss:20b"])
KEYS = st.sampled_from(
    ["model", "MODEL", "Model", "name", "modeſ", "options", "OPTIONS", "source", "stream"]
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """Mostly a body a route would take, often with a second spelling of a key."""
    body: dict[str, Any] = {"model": draw(MODELS), "stream": False}
    if draw(st.booleans()):
        body["source"], body["destination"] = draw(MODELS), "copy-of-it"
    for _ in range(draw(st.integers(0, 3))):
        key = draw(KEYS)
        if key.lower().startswith(("option", "OPTION")):
            body[key] = {"num_ctx": draw(st.integers(-1, 10**9))}
        elif key == "stream":
            body[key] = draw(st.booleans())
        else:
            body[key] = draw(OTHER_MODELS)
    if draw(st.booleans()):
        role_key = draw(st.sampled_from(["role", "ROLE"]))
        body["messages"] = [{role_key: "user", "content": draw(st.text(max_size=20))}]
    if draw(st.booleans()):
        body["prompt"] = draw(st.text(max_size=20))
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode()
    return draw(
        st.sampled_from(
            [
                raw,
                b"\xef\xbb\xbf" + raw,
                raw.decode().encode("utf-16"),
                raw[: max(1, len(raw) // 2)],
                raw.replace(b'"stream": false', b'"stream": NaN'),
                raw.replace(b"}", b', "x": "\\udc00"}', 1),
                raw.replace(b"}", b', "x": ' + b"1" * 5000 + b"}", 1),
            ]
        )
    )


BODIES = st.one_of(json_bodies(), json_bodies(), st.none(), st.binary(max_size=64))
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
)


def send(
    site: ThreadedSite,
    method: str,
    target: str,
    body: bytes | None,
    content_type: str | None,
    *,
    credential: str | None,
    gzipped: bool = False,
) -> rawhttp.RawResponse:
    headers: dict[str, str] = {}
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
        headers["X-Api-Key"] = credential
    if content_type is not None:
        headers["Content-Type"] = content_type
    if gzipped and body is not None:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return rawhttp.request_blocking(site.url, method, target, headers=headers, body=body)


def go_read(raw: bytes) -> dict[str, Any]:
    """The top level of a JSON body as Go's encoding/json fills a struct: keys matched
    ignoring case (with Unicode's simple folding: "ſ" is "s"), the last match winning."""

    def fold(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        folded: dict[str, Any] = {}
        for key, value in pairs:
            folded[key.casefold()] = value
        return folded

    data = json.loads(raw, object_pairs_hook=fold)
    return data if isinstance(data, dict) else {}


def check_invariants(
    site: ThreadedSite,
    before: dict[str, int],
    response: rawhttp.RawResponse,
    body: bytes | None,
    context: object,
) -> None:
    assert response.status < 500, (context, response.status, response.body[:300])
    for sim, request in site.new_requests(before):
        path = unquote(request.target.partition("?")[0])
        assert not path.startswith(FORBIDDEN), (context, request.target)
        assert sim in site.small, (context, "reached the 120b group", request.target)
        assert path in FORWARDABLE, (context, request.target)
        assert "?" not in request.target, (context, request.target)
        assert "authorization" not in {h.lower() for h in request.headers}, context
        assert "x-api-key" not in {h.lower() for h in request.headers}, context
        if request.method == "POST" and path != "/api/tags":
            assert request.body == body, (context, request.body[:100], body)
            # And read the way Ollama (Go) reads it, it names a model of this group.
            model = go_read(request.body).get("model") or go_read(request.body).get("name")
            assert normalise_model(str(model)) == "gpt-oss:20b", (context, request.body)


@given(
    request=requests(),
    body=BODIES,
    content_type=CONTENT_TYPES,
    gzipped=st.booleans(),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_ordinary_user_reaches_only_what_they_were_allowed(
    threaded_site: ThreadedSite,
    request: tuple[str, str],
    body: bytes | None,
    content_type: str | None,
    gzipped: bool,
) -> None:
    site = threaded_site
    method, target = request
    before = site.requests_now()
    response = send(
        site, method, target, body, content_type, credential=site.token, gzipped=gzipped
    )
    check_invariants(site, before, response, body, (method, target, content_type, gzipped))


MODEL_ROUTES = st.sampled_from(
    ["/api/chat", "/api/generate", "/api/embed", "/api/show", "/v1/chat/completions"]
)


@given(route=MODEL_ROUTES, body=json_bodies(), content_type=CONTENT_TYPES)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_model_route_forwards_only_what_go_reads_as_an_allowed_model(
    threaded_site: ThreadedSite, route: str, body: bytes, content_type: str | None
) -> None:
    site = threaded_site
    before = site.requests_now()
    response = send(site, "POST", route, body, content_type, credential=site.token)
    check_invariants(site, before, response, body, (route, content_type))


@given(request=requests(), body=BODIES, content_type=CONTENT_TYPES)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_without_credentials_nothing_reaches_a_backend(
    threaded_site: ThreadedSite,
    request: tuple[str, str],
    body: bytes | None,
    content_type: str | None,
) -> None:
    site = threaded_site
    method, target = request
    before = site.requests_now()
    response = send(site, method, target, body, content_type, credential=None)
    assert response.status < 500, (method, target, response.status)
    assert site.new_requests(before) == [], (method, target)
