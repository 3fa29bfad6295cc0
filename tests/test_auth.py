"""Authentication through the proxy: Bearer tokens and keys, Basic, Open WebUI, trusted networks.

Every test runs the proxy with auth on and its users in MongoDB (SecantusDB), in front
of simulated Ollama backends, and asserts what a client sees.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote

import ollama
import pytest
from conftest import StartProxy, StartSims
from identity import (
    BIG_CHAT,
    CHAT,
    PASSWORD,
    Site,
    basic,
    bearer,
    start_site,
)

from olbproxy.app import API
from olbproxy.auth.principal import Principal, principal_of
from olbproxy.health import USER_AGENT

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
    ("POST", "/api/show", {"model": "gpt-oss:20b"}),
    ("POST", "/api/chat", CHAT),
    ("POST", "/api/generate", {"model": "gpt-oss:20b", "prompt": "hi", "stream": False}),
    ("POST", "/api/embed", {"model": "gpt-oss:20b", "input": "hi"}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "gpt-oss:20b", "messages": CHAT["messages"]}),
    ("POST", "/api/pull", {"model": "gpt-oss:20b", "stream": False}),
]


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str) -> Site:
    return await start_site(start_sims, start_proxy, mongo_uri)


async def call(
    site: Site, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with site.proxy.http.request(
        method, site.url + path, json=body, headers=headers or {}
    ) as resp:
        text = await resp.text()
        try:
            data = json.loads(text) if text else None
        except json.JSONDecodeError:
            data = text
        return resp.status, data, dict(resp.headers)


def backend_calls(site: Site) -> list[str]:
    """What reached the backends, apart from the health checker's probes."""
    return [
        r.path
        for s in (site.small, site.large)
        for r in s.requests
        if r.headers.get("User-Agent") != USER_AGENT
    ]


def seen_principals(site: Site) -> list[Principal]:
    """Principals of model requests, as routing, metrics and persistence will see them."""
    seen: list[Principal] = []

    async def record(request: Any, exchange: Any) -> None:
        seen.append(principal_of(request))

    site.proxy.app[API].preflight.append(record)
    return seen


# -- what stays open, what is closed -----------------------------------------------------


async def test_root_preflight_and_auth_routes_need_no_credentials(site: Site) -> None:
    status, body, _ = await call(site, "GET", "/")
    assert (status, body) == (200, "Ollama is running")
    assert (await call(site, "HEAD", "/"))[0] == 200
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    assert (await call(site, "OPTIONS", "/api/chat", headers=preflight))[0] == 204
    status, body, _ = await call(site, "POST", "/api/auth/login", {"username": "x"})
    assert (status, body) == (400, {"error": "password is required"})
    # Only what accounts serves is open: no other path slips through to a backend.
    assert (await call(site, "GET", "/api/auth/anything-else"))[0] == 404
    assert (await call(site, "OPTIONS", "/api/tags"))[0] == 405  # not a preflight
    assert backend_calls(site) == []


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_endpoint_without_credentials_gets_401(
    site: Site, method: str, path: str, body: Any
) -> None:
    status, data, headers = await call(site, method, path, body)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    message = data["error"]["message"] if path.startswith("/v1/") else data["error"]
    assert message.startswith("authentication required")
    assert backend_calls(site) == []


async def test_a_login_token_opens_every_endpoint(site: Site) -> None:
    token = await site.user_with_token("kim", role="admin")
    for method, path, body in ENDPOINTS:
        status, data, _ = await call(site, method, path, body, bearer(token))
        assert status == 200, (path, data)


async def test_the_clients_authorization_never_reaches_a_backend(site: Site) -> None:
    token = await site.user_with_token("kim")
    assert (await call(site, "POST", "/api/chat", CHAT, bearer(token)))[0] == 200
    chats = [r for r in site.small.requests if r.path == "/api/chat"]
    assert chats
    assert all("authorization" not in r.headers for r in chats)


# -- tokens ------------------------------------------------------------------------------


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


async def test_expired_tampered_and_unsigned_tokens_get_401(site: Site) -> None:
    user = await site.accounts.add_user("kim", PASSWORD)
    expired, _ = site.accounts.tokens.issue(user, ttl=-1)
    status, data, headers = await call(site, "POST", "/api/chat", CHAT, bearer(expired))
    assert (status, data["error"].split(":")[0]) == (401, "token expired")
    assert headers["WWW-Authenticate"].startswith("Bearer")

    good, _ = site.accounts.tokens.issue(user)
    head, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    promoted = forge({"alg": "HS256", "typ": "JWT"}, {**claims, "role": "admin"})
    tampered = ".".join([head, promoted.split(".")[1], signature])
    alg_none = forge({"alg": "none", "typ": "JWT"}, claims)
    hs512 = forge({"alg": "HS512"}, claims, b"x" * 64)
    for token in (tampered, alg_none, alg_none.rstrip("."), hs512, "garbage"):
        status, data, _ = await call(site, "POST", "/api/chat", CHAT, bearer(token))
        assert (status, data["error"].split(":")[0]) == (401, "invalid token or API key")
    failures = site.authenticator.failures
    assert (failures["expired"], failures["invalid"]) == (1, 5)


async def test_a_token_signed_with_another_secret_is_refused(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri)
    other = await start_site(start_sims, start_proxy, mongo_uri, jwt_secret="o" * 48)
    token = await site.user_with_token("kim")
    assert (await call(other, "GET", "/api/tags", headers=bearer(token)))[0] == 401
    assert (await call(site, "GET", "/api/tags", headers=bearer(token)))[0] == 200


async def test_unknown_schemes_and_empty_bearer_are_401(site: Site) -> None:
    for value in ("Bearer", "Bearer ", "Token abc", "Digest x=y"):
        status, _, _ = await call(site, "GET", "/api/tags", headers={"Authorization": value})
        assert status == 401, value


# -- API keys, revocation, disabled users ------------------------------------------------


async def test_api_key_works_until_revoked(site: Site) -> None:
    await site.accounts.add_user("kim", PASSWORD)
    record, key = await site.accounts.create_key("kim", label="continue")
    assert (await call(site, "POST", "/api/chat", CHAT, bearer(key)))[0] == 200
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    status, data, _ = await call(site, "POST", "/api/chat", CHAT, bearer(wrong))
    assert (status, data["error"].split(":")[0]) == (401, "invalid API key")

    await site.accounts.revoke_key(record.id)
    # The running proxy learns of it on its next directory refresh (auth.cache_seconds).
    await site.authenticator.directory.refresh()
    status, data, _ = await call(site, "POST", "/api/chat", CHAT, bearer(key))
    assert (status, data) == (401, {"error": "API key revoked: ask an admin for a new one"})
    assert site.authenticator.failures["revoked"] == 1


async def test_revocation_takes_effect_within_cache_seconds_on_its_own(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri, cache_seconds=0.2)
    await site.accounts.add_user("kim", PASSWORD)
    record, key = await site.accounts.create_key("kim")
    assert (await call(site, "GET", "/api/tags", headers=bearer(key)))[0] == 200
    await site.accounts.revoke_key(record.id)
    revoked_at = asyncio.get_running_loop().time()
    while (await call(site, "GET", "/api/tags", headers=bearer(key)))[0] == 200:
        assert asyncio.get_running_loop().time() - revoked_at < 5, "revocation never seen"
        await asyncio.sleep(0.05)


async def test_verified_credentials_cost_no_database_round_trip(site: Site) -> None:
    token = await site.user_with_token("kim")
    _, key = await site.accounts.create_key("kim")
    for credential in (token, key):
        assert (await call(site, "GET", "/api/tags", headers=bearer(credential)))[0] == 200
    lookups = 0
    users, keys = site.store.users, site.store.keys
    real_get, real_key = users.get, keys.get

    async def counted_get(user_id: str) -> Any:
        nonlocal lookups
        lookups += 1
        return await real_get(user_id)

    async def counted_key(key_id: str) -> Any:
        nonlocal lookups
        lookups += 1
        return await real_key(key_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(users, "get", counted_get)
        patch.setattr(keys, "get", counted_key)
        for _ in range(20):
            for credential in (token, key):
                assert (await call(site, "GET", "/api/tags", headers=bearer(credential)))[0] == 200
    assert lookups == 0


async def test_a_disabled_user_is_refused_with_token_key_and_login(site: Site) -> None:
    token = await site.user_with_token("kim")
    _, key = await site.accounts.create_key("kim")
    await site.accounts.change_user("kim", {"disabled": True})
    await site.authenticator.directory.refresh()
    for credential in (token, key):
        status, data, _ = await call(site, "GET", "/api/tags", headers=bearer(credential))
        assert (status, data) == (403, {"error": "account 'kim' is disabled"})
    body = {"username": "kim", "password": PASSWORD}
    status, data, _ = await call(site, "POST", "/api/auth/login", body)
    assert (status, data) == (403, {"error": "account 'kim' is disabled"})


# -- authorization: groups and admin-only routes -------------------------------------------


async def test_a_user_only_reaches_and_sees_their_groups(site: Site) -> None:
    token = await site.user_with_token("kim", groups=frozenset({"20b"}))
    auth = bearer(token)
    assert (await call(site, "POST", "/api/chat", CHAT, auth))[0] == 200
    status, data, _ = await call(site, "POST", "/api/chat", BIG_CHAT, auth)
    assert (status, data) == (403, {"error": "you may not use model 'gpt-oss:120b' (group '120b')"})
    v1 = {"model": "gpt-oss:120b", "messages": CHAT["messages"]}
    status, data, _ = await call(site, "POST", "/v1/chat/completions", v1, auth)
    assert status == 403
    assert "gpt-oss:120b" in data["error"]["message"]
    assert not any(r.path == "/api/chat" for r in site.large.requests)

    _, tags, _ = await call(site, "GET", "/api/tags", headers=auth)
    assert [m["model"] for m in tags["models"]] == ["gpt-oss:20b"]
    _, models, _ = await call(site, "GET", "/v1/models", headers=auth)
    assert [m["id"] for m in models["data"]] == ["gpt-oss:20b"]
    _, ps, _ = await call(site, "GET", "/api/ps", headers=auth)
    assert {m["model"] for m in ps["models"]} <= {"gpt-oss:20b"}
    assert site.authenticator.failures["forbidden"] == 2


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/pull", {"model": "gpt-oss:20b", "stream": False}),
        ("POST", "/api/push", {"model": "gpt-oss:20b", "stream": False}),
        ("POST", "/api/create", {"model": "gpt-oss:20b", "from": "gpt-oss:20b"}),
        ("POST", "/api/copy", {"source": "gpt-oss:20b", "destination": "gpt-oss:20b-copy"}),
        ("DELETE", "/api/delete", {"model": "gpt-oss:20b"}),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ],
)
async def test_model_management_is_for_admins(
    site: Site, method: str, path: str, body: Any
) -> None:
    user = await site.user_with_token("kim")
    admin = await site.user_with_token("root", role="admin")
    status, data, _ = await call(site, method, path, body, bearer(user))
    assert status == 403
    if method != "HEAD":
        assert "admins" in data["error"]
    assert not any(r.path == path for r in site.small.requests)
    status, _, _ = await call(site, method, path, body, bearer(admin))
    assert status in (200, 201, 404), status


# -- HTTP Basic --------------------------------------------------------------------------


async def test_basic_auth_takes_an_api_key_as_password(site: Site) -> None:
    await site.accounts.add_user("kim", PASSWORD)
    _, key = await site.accounts.create_key("kim")
    seen = seen_principals(site)
    assert (await call(site, "POST", "/api/chat", CHAT, basic("kim", key)))[0] == 200
    assert (seen[-1].name, seen[-1].via) == ("kim", "basic")
    # A password is not accepted per request (that would be a bcrypt each time).
    status, data, _ = await call(site, "GET", "/api/tags", headers=basic("kim", PASSWORD))
    assert status == 401
    status, data, _ = await call(site, "GET", "/api/tags", headers=basic("kim", ""))
    assert (status, data["error"]) == (
        401,
        "HTTP Basic needs an API key (or a token) as the password",
    )
    status, _, _ = await call(site, "GET", "/api/tags", headers={"Authorization": "Basic !!"})
    assert status == 401


# -- Open WebUI as a trusted front-end ---------------------------------------------------


def owui_headers(key: str, **extra: str) -> dict[str, str]:
    return {
        **bearer(key),
        "X-OpenWebUI-User-Id": "3f1c-uuid",
        "X-OpenWebUI-User-Name": quote("김민지", safe=" "),
        "X-OpenWebUI-User-Email": "minji@example.com",
        "X-OpenWebUI-User-Role": "admin",
        "X-OpenWebUI-Chat-Id": "chat-42",
        **extra,
    }


async def test_front_end_key_names_the_end_user(site: Site) -> None:
    await site.accounts.add_user("owui", PASSWORD, groups=frozenset({"20b"}))
    _, key = await site.accounts.create_key("owui", label="open-webui", front_end=True)
    seen = seen_principals(site)
    assert (await call(site, "POST", "/api/chat", CHAT, owui_headers(key)))[0] == 200
    end_user = seen[-1]
    assert (end_user.id, end_user.name, end_user.room_hint) == (
        "owui:3f1c-uuid",
        "김민지",
        "chat-42",
    )
    # Never above the key's own rights: the key's owner is a user limited to 20b.
    assert (end_user.role, end_user.groups) == ("user", frozenset({"20b"}))
    status, _, _ = await call(site, "POST", "/api/chat", BIG_CHAT, owui_headers(key))
    assert status == 403
    status, _, _ = await call(
        site, "POST", "/api/pull", {"model": "gpt-oss:20b"}, owui_headers(key)
    )
    assert status == 403
    # Open WebUI's own calls (model lists) carry no user: they are the key owner's.
    assert (await call(site, "POST", "/api/chat", CHAT, bearer(key)))[0] == 200
    assert (seen[-1].name, seen[-1].room_hint) == ("owui", None)
    # The exchange (fairness, metrics, persistence) carries the end user.
    exchanges: list[Any] = []
    site.proxy.app[API].observers.append(exchanges.append)
    # Another end user has chats of their own (chat-42 is the first one's room now).
    other = {"X-OpenWebUI-User-Id": "u2", "X-OpenWebUI-Chat-Id": "chat-43"}
    await call(site, "POST", "/api/chat", CHAT, owui_headers(key, **other))
    assert (exchanges[-1].user, exchanges[-1].user_name) == ("owui:u2", "김민지")


async def test_front_end_role_header_counts_only_under_an_admin_key(site: Site) -> None:
    await site.accounts.add_user("owui", PASSWORD, role="admin")
    _, key = await site.accounts.create_key("owui", front_end=True)
    pull = {"model": "gpt-oss:20b", "stream": False}
    assert (await call(site, "POST", "/api/pull", pull, owui_headers(key)))[0] == 200
    as_user = owui_headers(key, **{"X-OpenWebUI-User-Role": "user"})
    assert (await call(site, "POST", "/api/pull", pull, as_user))[0] == 403


async def test_forwarded_user_headers_are_ignored_for_other_keys_and_tokens(site: Site) -> None:
    token = await site.user_with_token("kim")
    _, key = await site.accounts.create_key("kim")
    seen = seen_principals(site)
    for credential in (key, token):
        headers = {**owui_headers(credential), **bearer(credential)}
        assert (await call(site, "POST", "/api/chat", CHAT, headers))[0] == 200
        assert (seen[-1].name, seen[-1].role, seen[-1].room_hint) == ("kim", "user", None)
        assert not seen[-1].id.startswith("owui:")


# -- trusted networks (the ollama CLI on the Mac itself) -----------------------------------


async def test_trusted_network_is_served_as_the_trusted_user(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(
        start_sims,
        start_proxy,
        mongo_uri,
        trusted_networks=("127.0.0.0/8",),
        trusted_user="mac",
    )
    status, data, _ = await call(site, "GET", "/api/tags")
    assert status == 401
    assert "auth.trusted_user 'mac' does not exist" in data["error"]
    await site.accounts.add_user("mac", PASSWORD, groups=frozenset({"20b"}))
    seen = seen_principals(site)
    # The earlier miss is remembered for cache_seconds; a refresh finds the new user.
    await site.authenticator.directory.refresh()
    assert (await call(site, "POST", "/api/chat", CHAT))[0] == 200
    assert (seen[-1].name, seen[-1].via) == ("mac", "trusted")
    assert (await call(site, "POST", "/api/chat", BIG_CHAT))[0] == 403
    # A credential that is sent is still checked.
    assert (await call(site, "GET", "/api/tags", headers=bearer("garbage")))[0] == 401


async def test_peers_outside_trusted_networks_still_need_credentials(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(
        start_sims, start_proxy, mongo_uri, trusted_networks=("10.0.0.0/8",), trusted_user="mac"
    )
    await site.accounts.add_user("mac", PASSWORD)
    assert (await call(site, "GET", "/api/tags"))[0] == 401


# -- the real ollama Python client -------------------------------------------------------


async def test_ollama_async_client_with_headers_and_with_ollama_api_key(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await site.user_with_token("kim")
    _, key = await site.accounts.create_key("kim")
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    headers = {"Authorization": f"Bearer {token}"}
    async with ollama.AsyncClient(host=site.url, headers=headers) as client:
        answer = await client.chat(
            model="gpt-oss:20b", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.message.content
        assert "gpt-oss:20b" in [m.model for m in (await client.list()).models]

    monkeypatch.setenv("OLLAMA_API_KEY", key)
    async with ollama.AsyncClient(host=site.url) as keyed:
        stream = await keyed.generate(model="gpt-oss:20b", prompt="hi", stream=True)
        assert [part async for part in stream][-1].done

    monkeypatch.delenv("OLLAMA_API_KEY")
    async with ollama.AsyncClient(host=site.url) as bare:
        with pytest.raises(ollama.ResponseError) as refused:
            await bare.chat(model="gpt-oss:20b", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 401
    assert "authentication required" in refused.value.error


async def test_ollama_sync_client_with_ollama_api_key(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    await site.accounts.add_user("kim", PASSWORD)
    _, key = await site.accounts.create_key("kim")

    def chat() -> str:
        with ollama.Client(host=site.url) as client:
            reply = client.chat(model="gpt-oss:20b", messages=[{"role": "user", "content": "hi"}])
        return str(reply.message.content)

    # The sync client blocks its thread; the proxy runs on this event loop.
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    assert await asyncio.to_thread(chat)
    monkeypatch.setenv("OLLAMA_API_KEY", key[:-2] + "xx")
    with pytest.raises(ollama.ResponseError) as refused:
        await asyncio.to_thread(chat)
    assert refused.value.status_code == 401


async def test_failures_are_counted_by_reason_for_metrics(site: Site) -> None:
    await call(site, "GET", "/api/tags")
    await call(site, "GET", "/api/tags", headers=bearer("nope"))
    body = {"username": "ghost", "password": "whatever1"}
    await call(site, "POST", "/api/auth/login", body)
    assert dict(site.authenticator.failures) == {"missing": 1, "invalid": 1, "login": 1}
