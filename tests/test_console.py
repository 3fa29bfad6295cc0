"""The account pages' API through the proxy: me, own keys, own password, admins' users.

Auth on, users in MongoDB (SecantusDB), simulated backends; every assertion is on what
a client (or an attacker with a user's token) sees.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import StartProxy, StartSims
from identity import CHAT, PASSWORD, Site, bearer, start_site

from olbproxy.auth import passwords


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str) -> Site:
    # A long cache: a change shows at once only because the console tells the directory.
    return await start_site(start_sims, start_proxy, mongo_uri, cache_seconds=300)


async def call(
    site: Site, method: str, path: str, credential: str | None = None, body: Any = None
) -> tuple[int, Any]:
    headers = bearer(credential) if credential else {}
    async with site.proxy.http.request(method, site.url + path, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def models(site: Site, credential: str) -> list[str]:
    status, body = await call(site, "GET", "/api/tags", credential)
    assert status == 200, body
    return sorted(m["name"] for m in body["models"])


# -- me --------------------------------------------------------------------------------


async def test_me_tells_who_is_asking(site: Site) -> None:
    kim = await site.user_with_token("kim", groups=frozenset({"20b"}))
    status, body = await call(site, "GET", "/api/auth/me", kim)
    assert status == 200
    assert (body["username"], body["role"], body["groups"], body["every_group"]) == (
        "kim",
        "user",
        ["20b"],
        False,
    )
    admin = await site.user_with_token("boss", role="admin")
    _, body = await call(site, "GET", "/api/auth/me", admin)
    assert (body["role"], body["groups"], body["every_group"]) == ("admin", ["120b", "20b"], True)


async def test_the_account_routes_need_credentials(site: Site) -> None:
    for method, path in (
        ("GET", "/api/auth/me"),
        ("GET", "/api/auth/keys"),
        ("POST", "/api/auth/keys"),
        ("DELETE", "/api/auth/keys/0123456789ab"),
        ("POST", "/api/auth/password"),
        ("GET", "/api/olbproxy/users"),
        ("PATCH", "/api/olbproxy/users/kim"),
    ):
        status, body = await call(site, method, path, body={})
        assert status == 401, (method, path, body)
        assert body["error"].startswith("authentication required")


# -- keys ------------------------------------------------------------------------------


async def test_a_user_creates_uses_and_revokes_their_own_key(site: Site) -> None:
    kim = await site.user_with_token("kim")
    status, made = await call(site, "POST", "/api/auth/keys", kim, {"label": " laptop "})
    assert status == 201
    key = made["key"]
    assert key.startswith("olb_") and made["label"] == "laptop" and made["groups"] is None
    assert await models(site, key) == ["gpt-oss:120b", "gpt-oss:20b"]
    status, listed = await call(site, "GET", "/api/auth/keys", kim)
    assert status == 200
    assert [(k["id"], k["label"], k["revoked_at"]) for k in listed["keys"]] == [
        (made["id"], "laptop", None)
    ]
    assert "key" not in listed["keys"][0]  # the secret is shown once, at creation
    assert (await call(site, "DELETE", f"/api/auth/keys/{made['id']}", kim))[0] == 204
    # Refused at once on this proxy, not after auth.cache_seconds (300 s here).
    status, body = await call(site, "GET", "/api/tags", key)
    assert (status, body["error"]) == (401, "API key revoked: ask an admin for a new one")
    _, listed = await call(site, "GET", "/api/auth/keys", kim)
    assert listed["keys"][0]["revoked_at"] is not None
    status, body = await call(site, "DELETE", f"/api/auth/keys/{made['id']}", kim)
    assert (status, body["error"]) == (404, f"API key {made['id']} is revoked already")


async def test_another_users_keys_are_neither_listed_nor_revocable(site: Site) -> None:
    kim = await site.user_with_token("kim")
    lee = await site.user_with_token("lee")
    _, made = await call(site, "POST", "/api/auth/keys", kim, {"label": "kim's"})
    _, listed = await call(site, "GET", "/api/auth/keys", lee)
    assert listed == {"keys": []}
    status, body = await call(site, "DELETE", f"/api/auth/keys/{made['id']}", lee)
    # The same answer as for a key that does not exist: ids cannot be probed.
    assert (status, body) == (404, {"error": f"no API key {made['id']}"})
    status, body = await call(site, "DELETE", "/api/auth/keys/0123456789ab", lee)
    assert (status, body) == (404, {"error": "no API key 0123456789ab"})
    assert await models(site, made["key"])  # still works


async def test_a_key_never_gets_more_groups_than_its_maker(site: Site) -> None:
    kim = await site.user_with_token("kim", groups=frozenset({"20b"}))
    status, body = await call(site, "POST", "/api/auth/keys", kim, {"groups": ["20b", "120b"]})
    assert (status, body) == (403, {"error": "a key cannot have groups you do not have: 120b"})
    status, body = await call(site, "POST", "/api/auth/keys", kim, {"groups": ["70b"]})
    assert status == 400
    assert body["error"] == "unknown group(s) 70b (configured: 120b, 20b)"

    # An unrestricted user's key narrowed to 20b ...
    boss = await site.user_with_token("boss")
    _, narrow = await call(site, "POST", "/api/auth/keys", boss, {"groups": ["20b"]})
    assert narrow["groups"] == ["20b"]
    # ... cannot mint a wider key, and a key it mints without groups stays as narrow.
    status, body = await call(site, "POST", "/api/auth/keys", narrow["key"], {"groups": ["120b"]})
    assert (status, body) == (403, {"error": "a key cannot have groups you do not have: 120b"})
    status, child = await call(site, "POST", "/api/auth/keys", narrow["key"], {"label": "child"})
    assert status == 201
    assert child["groups"] == ["20b"]
    assert await models(site, child["key"]) == ["gpt-oss:20b"]


async def test_key_requests_are_checked(site: Site) -> None:
    kim = await site.user_with_token("kim")
    for body, message in (
        ({"label": 7}, "label must be a string of at most 64 characters"),
        ({"label": "x" * 65}, "label must be a string of at most 64 characters"),
        ({"groups": []}, "groups must be null (every group) or a non-empty list of names"),
        ({"groups": "20b"}, "groups must be null (every group) or a non-empty list of names"),
    ):
        assert await call(site, "POST", "/api/auth/keys", kim, body) == (400, {"error": message})
    status, body = await call(site, "PUT", "/api/auth/keys", kim, {})
    assert status == 405


async def test_front_end_keys_and_their_end_users_manage_no_keys(site: Site) -> None:
    await site.accounts.add_user("open-webui", PASSWORD)
    _, front = await site.accounts.create_key("open-webui", front_end=True)
    end_user = {**bearer(front), "X-OpenWebUI-User-Id": "u1", "X-OpenWebUI-User-Name": "kim"}
    for headers in (bearer(front), end_user):
        async with site.proxy.http.post(
            site.url + "/api/auth/keys", json={}, headers=headers
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"].startswith("a front-end key cannot manage")


# -- password --------------------------------------------------------------------------


async def test_changing_ones_password(site: Site) -> None:
    kim = await site.user_with_token("kim")
    new = "a much longer passphrase"
    body = {"current_password": "wrong one", "new_password": new}
    status, answer = await call(site, "POST", "/api/auth/password", kim, body)
    assert (status, answer) == (403, {"error": "the current password is wrong"})
    body = {"current_password": PASSWORD, "new_password": "short"}
    status, answer = await call(site, "POST", "/api/auth/password", kim, body)
    assert (status, answer) == (400, {"error": "password is too short (at least 8 characters)"})

    body = {"current_password": PASSWORD, "new_password": new}
    status, answer = await call(site, "POST", "/api/auth/password", kim, body)
    assert status == 200
    assert await models(site, answer["token"])  # the fresh token works
    await site.token("kim", new)
    async with site.proxy.http.post(
        site.url + "/api/auth/login", json={"username": "kim", "password": PASSWORD}
    ) as resp:
        assert resp.status == 401


async def test_password_guesses_with_a_stolen_token_are_throttled(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri, login_attempts=2)
    kim = await site.user_with_token("kim")
    body = {"current_password": "guess", "new_password": "whatever it is"}
    for _ in range(2):
        assert (await call(site, "POST", "/api/auth/password", kim, body))[0] == 403
    status, answer = await call(site, "POST", "/api/auth/password", kim, body)
    assert status == 429
    assert answer["error"].startswith("too many failed logins for this user")
    # The same limit as the login page: it is closed to guesses too.
    async with site.proxy.http.post(
        site.url + "/api/auth/login", json={"username": "kim", "password": PASSWORD}
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) > 0


async def test_the_current_password_is_checked_off_the_event_loop(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    kim = await site.user_with_token("kim")
    on_loop: list[bool] = []
    real = passwords.check

    def check(*args: Any) -> bool:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread has no running loop
            on_loop.append(False)
        return real(*args)

    monkeypatch.setattr(passwords, "check", check)
    body = {"current_password": PASSWORD, "new_password": "another long one"}
    assert (await call(site, "POST", "/api/auth/password", kim, body))[0] == 200
    assert on_loop == [False]


# -- admins: users -----------------------------------------------------------------------


async def test_only_admins_list_and_change_users(site: Site) -> None:
    kim = await site.user_with_token("kim")
    assert (await call(site, "GET", "/api/olbproxy/users", kim))[0] == 403
    status, body = await call(site, "PATCH", "/api/olbproxy/users/kim", kim, {"disabled": True})
    assert (status, body) == (403, {"error": "the user list is for admins"})
    # A key of an admin's, used by a non-admin, is still an admin's: keys act as their owner.
    boss = await site.user_with_token("boss", role="admin")
    status, body = await call(site, "GET", "/api/olbproxy/users", boss)
    assert status == 200
    assert [(u["username"], u["role"], u["disabled"]) for u in body["users"]] == [
        ("boss", "admin", False),
        ("kim", "user", False),
    ]
    assert "password_hash" not in json.dumps(body)


async def test_disabling_a_user_takes_effect_at_once(site: Site) -> None:
    boss = await site.user_with_token("boss", role="admin")
    kim = await site.user_with_token("kim")
    assert await models(site, kim)
    status, body = await call(site, "PATCH", "/api/olbproxy/users/KIM", boss, {"disabled": True})
    assert status == 200 and body["disabled"] is True
    async with site.proxy.http.post(site.url + "/api/chat", json=CHAT, headers=bearer(kim)) as r:
        assert (r.status, await r.json()) == (403, {"error": "account 'kim' is disabled"})
    await call(site, "PATCH", "/api/olbproxy/users/kim", boss, {"disabled": False})
    assert await models(site, kim)


async def test_an_admin_sets_a_users_groups(site: Site) -> None:
    boss = await site.user_with_token("boss", role="admin")
    kim = await site.user_with_token("kim")
    status, body = await call(site, "PATCH", "/api/olbproxy/users/kim", boss, {"groups": ["20b"]})
    assert (status, body["groups"]) == (200, ["20b"])
    assert await models(site, kim) == ["gpt-oss:20b"]
    status, body = await call(site, "PATCH", "/api/olbproxy/users/kim", boss, {"groups": None})
    assert (status, body["groups"]) == (200, None)
    assert await models(site, kim) == ["gpt-oss:120b", "gpt-oss:20b"]


async def test_user_changes_are_checked(site: Site) -> None:
    boss = await site.user_with_token("boss", role="admin")
    await site.accounts.add_user("kim", PASSWORD)
    for path, body, status, message in (
        ("/api/olbproxy/users/kim", {"role": "admin"}, 400, "unknown field(s) role"),
        ("/api/olbproxy/users/kim", {"disabled": "yes"}, 400, "disabled must be true or false"),
        ("/api/olbproxy/users/kim", {"groups": ["nope"]}, 400, "unknown group(s) nope"),
        ("/api/olbproxy/users/kim", {}, 400, "nothing to change"),
        ("/api/olbproxy/users/boss", {"disabled": True}, 400, "you cannot disable your own"),
        ("/api/olbproxy/users/nobody", {"disabled": True}, 404, "no user named 'nobody'"),
    ):
        got, answer = await call(site, "PATCH", path, boss, body)
        assert got == status, (body, answer)
        assert answer["error"].startswith(message), answer
    user = await site.store.users.find("kim")
    assert user is not None and user.role == "user" and not user.disabled
