"""The edge as an attacker meets it: every reproduction of issue 10, on real sockets.

An ordinary user (``kim``, limited to the 20b group) tries the side doors: other
spellings of admin routes, text/plain bodies, case-variant keys, Ollama's account and
experimental routes, credentials that could leak to a backend. The simulators record
what reached them; every attempt must be refused before any backend sees it.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from typing import Any

import pytest
import rawhttp
from conftest import StartProxy, StartSims, group, make_settings
from identity import PASSWORD, Site, auth_settings, bearer, site_settings, start_site

from olbproxy.app import create_app
from olbproxy.edge import Route, RouteTable, canonical_path
from olbproxy.errors import BadRequest, MethodNotAllowed, NotFound
from olbproxy.health import USER_AGENT
from olbproxy.settings import ExtraRoute, RoutesSettings

MANAGEMENT = ("pull", "push", "create", "copy", "delete", "blobs", "signout", "/me", "keys")
SPELLINGS = [
    "/./api/pull",
    "/x/../api/pull",
    "/api/auth/../pull",
    "/%2e/api/pull",
    "/%2E%2E/api/pull",
    "/api/%2e%2e/api/pull",
    "/api%2Fpull",
    "/api%2fdelete",
    "/api%5Cpull",
    "/api\\pull",
    "//api/pull",
    "/api//pull",
    "/api/pull/.",
    "/api/pull/..",
    "/api/./pull",
    "/api/blobs/../pull",
    "/api/pull%00",
    "/api/pull%0a",
    "/api/pull/",
    "/API/PULL",
    "/api/%70ull",  # decodes to /api/pull itself: refused as an admin route
    "/api/pu%6cl?x=/api/pull",
]


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy) -> Site:
    return await start_site(start_sims, start_proxy, None)


async def kim(site: Site) -> str:
    """An ordinary user limited to the 20b group."""
    return await site.user_with_token("kim", groups=frozenset({"20b"}))


def backend_paths(site: Site) -> list[str]:
    """Targets that reached a backend, apart from the health checker's probes."""
    return [
        r.target
        for sim in (site.small, site.large)
        for r in sim.requests
        if r.headers.get("User-Agent") != USER_AGENT
    ]


def management_reached(site: Site) -> list[str]:
    return [t for t in backend_paths(site) if any(word in t for word in MANAGEMENT)]


@pytest.mark.parametrize("target", SPELLINGS)
async def test_no_spelling_of_an_admin_route_reaches_a_backend(site: Site, target: str) -> None:
    token = await kim(site)
    body = json.dumps({"model": "gpt-oss:20b", "stream": False}).encode()
    for method in ("POST", "DELETE", "HEAD"):
        resp = await rawhttp.request(site.url, method, target, headers=bearer(token), body=body)
        assert resp.status in (400, 403, 404, 405), (method, target, resp.status)
        if method != "HEAD":
            assert "error" in resp.json()
    assert management_reached(site) == []


@pytest.mark.parametrize(("method", "target"), [("OPTIONS", "*"), ("CONNECT", "127.0.0.1:1")])
async def test_a_target_without_a_path_is_refused_before_the_edge(
    site: Site, method: str, target: str
) -> None:
    # No route can take it (aiohttp's router answers, the app has no middlewares): still
    # a refusal, and nothing reaches a backend, with credentials or without.
    token = await kim(site)
    for headers in ({}, bearer(token)):
        resp = await rawhttp.request(site.url, method, target, headers=headers)
        assert resp.status == 404, (method, target, resp.status)
    assert backend_paths(site) == []


async def test_the_canonical_admin_route_is_refused_and_an_admin_gets_it(site: Site) -> None:
    token = await kim(site)
    body = json.dumps({"model": "gpt-oss:20b", "stream": False}).encode()
    resp = await rawhttp.request(site.url, "POST", "/api/%70ull", headers=bearer(token), body=body)
    assert resp.status == 403 and "admins" in resp.json()["error"]
    admin = await site.user_with_token("root", role="admin")
    resp = await rawhttp.request(site.url, "POST", "/api/%70ull", headers=bearer(admin), body=body)
    assert resp.status == 200
    # Forwarded as the canonical path it was routed on, not as it was spelled.
    assert [t for t in backend_paths(site) if "pull" in t] == ["/api/pull"]


async def test_a_text_plain_body_is_read_as_json_and_routed_by_its_model(site: Site) -> None:
    token = await kim(site)
    headers = {**bearer(token), "Content-Type": "text/plain"}
    big = json.dumps({"model": "gpt-oss:120b", "prompt": "hi", "stream": False}).encode()
    for target in ("/./api/generate", "/api/generate"):
        resp = await rawhttp.request(site.url, "POST", target, headers=headers, body=big)
        assert resp.status in (400, 403), target
    small = json.dumps({"model": "gpt-oss:20b", "prompt": "hi", "stream": False}).encode()
    resp = await rawhttp.request(site.url, "POST", "/api/generate", headers=headers, body=small)
    assert resp.status == 200
    assert [r.path for r in site.large.requests if r.headers.get("User-Agent") != USER_AGENT] == []
    forwarded = [r for r in site.small.requests if r.path == "/api/generate"]
    # What was authorised is what was sent, labelled as what it was read as.
    assert forwarded[0].body == small
    assert forwarded[0].headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-oss:20b", "MODEL": "gpt-oss:120b"},
        {"model": "gpt-oss:20b", "Model": "gpt-oss:120b"},
        {"name": "gpt-oss:20b", "MODEL": "gpt-oss:120b"},
        {"model": "gpt-oss:20b", "modeſ": "x"},  # a long s folds to 's' in Go
        {"model": "gpt-oss:20b", "options": {"num_ctx": 1024}, "OPTIONS": {"num_ctx": 10**6}},
        {"model": "gpt-oss:20b", "optionſ": {"num_ctx": 10**6}},
        {"model": "gpt-oss:20b", "messages": [{"role": "user", "CONTENT": "x", "content": "y"}]},
        {
            "model": "gpt-oss:20b",
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "a", "NAME": "b", "arguments": {}}}],
                }
            ],
        },
    ],
)
async def test_case_variant_keys_that_go_would_merge_are_refused(
    start_sims: StartSims, start_proxy: StartProxy, body: dict[str, Any]
) -> None:
    small, large = await start_sims(2, tokens_per_second=0)
    settings = site_settings(small, large, None)
    limited = replace(settings.groups[0], max_num_ctx=8192)
    proxy = await start_proxy(replace(settings, groups=(limited, settings.groups[1])))
    site = Site(proxy, small, large)
    token = await kim(site)
    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], **body}).encode()
    resp = await rawhttp.request(site.url, "POST", "/api/chat", headers=bearer(token), body=raw)
    assert resp.status == 400
    assert "lowercase" in resp.json()["error"]
    assert backend_paths(site) == []


async def test_free_form_values_keep_their_keys(site: Site) -> None:
    token = await kim(site)
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"City": {"type": "string"}}},
        },
    }
    body = {
        "model": "gpt-oss:20b",
        "stream": False,
        "format": {"type": "object", "properties": {"Answer": {"type": "string"}}},
        "tools": [tool],
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"City": "Seoul"}}}],
            },
            {"role": "tool", "content": "sunny"},
        ],
    }
    raw = json.dumps(body).encode()
    resp = await rawhttp.request(site.url, "POST", "/api/chat", headers=bearer(token), body=raw)
    assert resp.status == 200
    assert [r.body for r in site.small.requests if r.path == "/api/chat"] == [raw]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'\xef\xbb\xbf{"model":"gpt-oss:20b"}', "BOM"),
        ('{"model":"gpt-oss:20b"}'.encode("utf-16"), "UTF-16"),
        (b'{"model":"gpt-oss:20b","prompt":"\\ud800"}', "lone surrogate"),
        (b'{"model":"gpt-oss:20b","options":{"temperature":NaN}}', "NaN"),
        (b'{"model":"gpt-oss:20b","options":{"seed":' + b"9" * 5000 + b"}}", "huge integer"),
        (b'{"model":"gpt-oss:20b","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "deep nesting"),
        (b'{"model":"gpt-oss:20b"', "truncated"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b'["gpt-oss:20b"]', "not an object"),
        (b'{"model":"gpt-oss:20b","messages":["hi"]}', "messages of strings"),
        (b'{"model":["gpt-oss:20b"]}', "model not a string"),
    ],
)
async def test_bodies_ollama_would_not_read_get_400_not_500(
    site: Site, raw: bytes, why: str
) -> None:
    token = await kim(site)
    for target in ("/api/chat", "/v1/chat/completions", "/api/show"):
        resp = await rawhttp.request(site.url, "POST", target, headers=bearer(token), body=raw)
        assert resp.status == 400, (why, target, resp.body[:200])
        message = resp.json()["error"]
        text = message["message"] if isinstance(message, dict) else message
        assert "Traceback" not in text and "internal" not in text
    assert backend_paths(site) == []


async def test_a_compressed_body_gets_415(site: Site) -> None:
    token = await kim(site)
    raw = gzip.compress(json.dumps({"model": "gpt-oss:20b", "prompt": "hi"}).encode())
    headers = {**bearer(token), "Content-Encoding": "gzip"}
    resp = await rawhttp.request(site.url, "POST", "/api/generate", headers=headers, body=raw)
    assert resp.status == 415
    assert backend_paths(site) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/signout"),
        ("POST", "/api/me"),
        ("DELETE", "/api/user/keys/c3NoLWVkMjU1MTk"),
        ("POST", "/api/experimental/web_search"),
        ("POST", "/api/experimental/web_fetch"),
        ("GET", "/api/experimental/model-recommendations"),
        ("GET", "/api/some-future-route"),
    ],
)
async def test_account_and_experimental_routes_are_off_by_default(
    site: Site, method: str, path: str
) -> None:
    for token in (await kim(site), await site.user_with_token("root", role="admin")):
        resp = await rawhttp.request(site.url, method, path, headers=bearer(token), body=b"{}")
        assert resp.status == 404
    assert backend_paths(site) == []


async def test_enabled_account_routes_are_for_admins_and_go_to_one_instance(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    small = await start_sims(2, prefix="s", tokens_per_second=0)
    large = await start_sims(1, prefix="l", tokens_per_second=0)
    routes = RoutesSettings(
        account=True,
        experimental=True,
        instance=large[0].url,
        extra=(
            ExtraRoute(path="/api/newthing", methods=("POST",), access="user", model=True),
            ExtraRoute(path="/api/admin-thing", methods=("GET",)),
        ),
    )
    settings = make_settings(
        group("20b", ("gpt-oss:20b",), small),
        group("120b", ("gpt-oss:120b",), large),
        auth=auth_settings(),
        routes=routes,
    )
    proxy = await start_proxy(settings)
    site = Site(proxy, small[0], large[0])
    user = await kim(site)
    admin = await site.user_with_token("root", role="admin")
    resp = await rawhttp.request(site.url, "POST", "/api/signout", headers=bearer(user))
    assert resp.status == 403
    resp = await rawhttp.request(site.url, "GET", "/api/admin-thing", headers=bearer(user))
    assert resp.status == 403
    for _ in range(3):
        resp = await rawhttp.request(site.url, "POST", "/api/signout", headers=bearer(admin))
        assert resp.status == 404  # the simulator has no such route: its own 404
    # Never fanned out: only the named instance saw them.
    assert [r.path for r in large[0].requests if r.path == "/api/signout"] == ["/api/signout"] * 3
    assert not any(r.path == "/api/signout" for s in small for r in s.requests)
    # An extra route that names a model goes to that model's group, for those allowed it.
    newthing = json.dumps({"model": "gpt-oss:120b"}).encode()
    resp = await rawhttp.request(
        site.url, "POST", "/api/newthing", headers=bearer(user), body=newthing
    )
    assert resp.status == 403
    newthing = json.dumps({"model": "gpt-oss:20b"}).encode()
    resp = await rawhttp.request(
        site.url, "POST", "/api/newthing", headers=bearer(user), body=newthing
    )
    assert resp.status == 404  # reached a 20b simulator, which does not know the path
    assert sum(r.path == "/api/newthing" for s in small for r in s.requests) == 1


async def test_credentials_and_front_end_identity_never_reach_a_backend(site: Site) -> None:
    token = await kim(site)
    _record, key = await site.accounts.create_key("kim", front_end=True)
    headers = {
        "X-Api-Key": key,
        "Cookie": "session=secret",
        "Proxy-Authorization": "Basic eDp5",
        "X-OpenWebUI-User-Id": "u-1",
        "X-OpenWebUI-User-Name": "Kim",
        "X-OpenWebUI-User-Email": "kim@example.com",
        "X-OpenWebUI-Chat-Id": "chat-1",
        "User-Agent": "ollama-python/0.6.3",
    }
    body = json.dumps({"model": "gpt-oss:20b", "prompt": "hi", "stream": False}).encode()
    resp = await rawhttp.request(site.url, "POST", "/api/generate", headers=headers, body=body)
    assert resp.status == 200  # X-Api-Key is a credential (the Anthropic SDKs send it)
    headers["Authorization"] = f"Bearer {token}"
    resp = await rawhttp.request(site.url, "POST", "/api/generate", headers=headers, body=body)
    assert resp.status == 200
    seen = [r for r in site.small.requests if r.path == "/api/generate"]
    assert len(seen) == 2
    for request in seen:
        names = {name.lower() for name in request.headers}
        assert names <= {"host", "content-type", "content-length", "user-agent", "accept"}
        assert request.headers["User-Agent"] == "ollama-python/0.6.3"


async def test_tokenless_trust_needs_a_host_that_names_this_machine(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(
        start_sims, start_proxy, None, trusted_networks=("127.0.0.0/8",), trusted_user="mac"
    )
    await site.accounts.add_user("mac", PASSWORD)
    port = site.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "app.localhost"):
        resp = await rawhttp.request(site.url, "GET", "/api/tags", host=host)
        assert resp.status == 200, host
    # A page that rebinds its own domain to 127.0.0.1 sends that domain as Host.
    for host in (f"evil.example:{port}", "attacker.test", f"localhost.evil.example:{port}"):
        resp = await rawhttp.request(site.url, "GET", "/api/tags", host=host)
        assert resp.status == 401, host


async def test_an_error_after_the_response_started_ends_the_stream_not_a_second_response(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    from aiohttp import web

    from olbproxy.app import EDGE

    sims = await start_sims(1, tokens_per_second=0)
    settings = make_settings(group("20b", ("gpt-oss:20b",), sims))
    app = await create_app(settings)

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"response":"a","done":false}\n')
        raise RuntimeError("a bug after the first byte")

    app[EDGE].table.add(Route("/api/broken", ("GET",), broken))
    proxy = await start_proxy(settings, app)
    resp = await rawhttp.request(proxy.url, "GET", "/api/broken")
    assert resp.status == 200
    lines = resp.body.decode().splitlines()
    assert lines[0] == '{"response":"a","done":false}'
    error = json.loads(lines[-1])["error"]
    assert error.startswith("internal error (reference ") and "RuntimeError" not in error
    assert b"HTTP/1.1" not in resp.body


def test_canonical_paths() -> None:
    assert canonical_path("/api/%74ags?x=1") == "/api/tags"
    assert canonical_path("/v1/models/gpt-oss%3A20b") == "/v1/models/gpt-oss:20b"
    assert canonical_path("/ui/") == "/ui/"
    for bad in SPELLINGS[:17]:
        with pytest.raises(BadRequest):
            canonical_path(bad)
    with pytest.raises(BadRequest):
        canonical_path("http://example.com/api/pull")


def test_the_route_table_answers_404_and_405_by_itself() -> None:
    async def handler(request: Any) -> Any:
        raise AssertionError("not called")

    table = RouteTable([Route("/api/chat", ("POST",), handler), Route("/a/{x}", ("GET",), handler)])
    assert table.resolve("POST", "/api/chat")[0].path == "/api/chat"
    assert table.resolve("HEAD", "/a/b")[1] == {"x": "b"}
    with pytest.raises(MethodNotAllowed):
        table.resolve("GET", "/api/chat")
    with pytest.raises(NotFound):
        table.resolve("GET", "/a/b/c")


async def test_usernames_that_mix_confusable_scripts_are_refused_at_registration(
    site: Site,
) -> None:
    async def register(name: str) -> int:
        body = {"username": name, "password": PASSWORD}
        async with site.proxy.http.post(site.url + "/api/auth/register", json=body) as resp:
            return resp.status

    assert await register("alice") == 201
    assert await register("\u0430lice") == 400  # a Cyrillic "а"
    assert await register("p\u0430ypal") == 400
    assert await register("\u03b1lpha") == 400  # Greek alpha with Latin
    assert await register("kim민준") == 201  # Latin with Hangul is how Korean is written
    assert await register("김민준") == 201
    assert await register("田中さん") == 201


async def test_names_from_front_end_headers_are_stored_without_control_characters(
    site: Site,
) -> None:
    from olbproxy.app import API
    from olbproxy.auth.principal import Principal, principal_of

    await site.accounts.add_user("owui", PASSWORD)
    _record, key = await site.accounts.create_key("owui", front_end=True)
    seen: list[Principal] = []

    async def record(request: Any, exchange: Any) -> None:
        seen.append(principal_of(request))

    site.proxy.app[API].preflight.append(record)
    forged = "Kim%0A2026-12-05 ERROR admin logged in%E2%80%AEevil"  # percent-encoded
    headers = {
        **bearer(key),
        "X-OpenWebUI-User-Id": "u-1",
        "X-OpenWebUI-User-Name": forged,
    }
    body = json.dumps({"model": "gpt-oss:20b", "prompt": "hi", "stream": False}).encode()
    resp = await rawhttp.request(site.url, "POST", "/api/generate", headers=headers, body=body)
    assert resp.status == 200
    assert seen[0].name == "Kim 2026-12-05 ERROR admin logged inevil"
    assert seen[0].id == "owui:u-1"
