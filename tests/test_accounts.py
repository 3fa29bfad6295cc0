"""Sign-up and login through the proxy, with users in MongoDB (SecantusDB)."""

from __future__ import annotations

import asyncio
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any

import bcrypt
import pytest
from conftest import StartProxy, StartSims
from identity import CHAT, PASSWORD, Site, bearer, start_site
from mongo import MongoServer

from olbproxy.auth import passwords
from olbproxy.store import User, new_id, now

GENERIC = {"error": "invalid username or password"}
KOREAN_PASSWORD = "비밀번호는길수록안전합니다" * 3  # 36 syllables, 108 bytes


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str) -> Site:
    return await start_site(start_sims, start_proxy, mongo_uri)


async def post(site: Site, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
    async with site.proxy.http.post(site.url + path, json=body) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def register(site: Site, username: str, password: str | None = PASSWORD, **extra: Any) -> Any:
    return await post(
        site, "/api/auth/register", {"username": username, "password": password, **extra}
    )


async def login(site: Site, username: str, password: str = PASSWORD) -> Any:
    return await post(site, "/api/auth/login", {"username": username, "password": password})


async def test_register_then_login_returns_a_working_token(site: Site) -> None:
    status, body, _ = await register(site, "kim")
    assert status == 201
    assert (body["username"], body["role"]) == ("kim", "user")
    before = time.time()
    status, body, _ = await login(site, "kim")
    assert status == 200
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.tzinfo is not None
    assert abs(expires.timestamp() - (before + 7 * 24 * 3600)) < 5
    async with site.proxy.http.post(
        site.url + "/api/chat", json=CHAT, headers=bearer(body["token"])
    ) as resp:
        assert resp.status == 200
    user = await site.store.users.find("kim")
    assert user is not None
    assert user.last_login_at is not None


async def test_a_username_is_taken_whatever_its_case(site: Site) -> None:
    assert (await register(site, "Alice"))[0] == 201
    for taken in ("Alice", "alice", "ALICE", "Ａｌｉｃｅ"):  # the last one is full-width
        status, body, _ = await register(site, taken)
        assert status == 409, taken
        assert "is taken" in body["error"]


async def test_wrong_password_and_unknown_user_look_the_same(site: Site) -> None:
    await register(site, "kim")
    wrong = await login(site, "kim", "not the password")
    unknown = await login(site, "nobody", "not the password")
    malformed = await login(site, "no spaces allowed", "x")
    for status, body, headers in (wrong, unknown, malformed):
        assert (status, body) == (401, GENERIC)
        assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_failed_logins_are_throttled_per_username(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri, login_attempts=3)
    await register(site, "kim")
    await register(site, "lee")
    for _ in range(3):
        assert (await login(site, "kim", "wrong password"))[0] == 401
    status, body, headers = await login(site, "kim")  # even the right password waits
    assert status == 429
    assert body["error"].startswith("too many failed logins for this user")
    assert 1 <= int(headers["Retry-After"]) <= 300
    # Another user from the same address is not held up by kim's attacker.
    assert (await login(site, "lee"))[0] == 200
    # The same for an unknown name: nothing tells it apart.
    for _ in range(3):
        await login(site, "ghost", "wrong password")
    assert (await login(site, "ghost", "wrong password"))[0] == 429
    assert site.authenticator.failures["throttled"] == 2


async def test_attempts_are_throttled_per_client_address(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri, address_attempts=4)
    await site.accounts.add_user("kim", PASSWORD)
    for name in ("a1", "a2", "a3", "a4"):
        assert (await login(site, name, "guess1234"))[0] == 401
    status, body, headers = await login(site, "kim")
    assert status == 429
    assert "from this address" in body["error"]
    assert "Retry-After" in headers


async def test_successful_logins_do_not_use_up_attempts(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(
        start_sims, start_proxy, mongo_uri, login_attempts=2, address_attempts=2
    )
    await site.accounts.add_user("kim", PASSWORD)
    for _ in range(6):
        assert (await login(site, "kim"))[0] == 200


async def test_a_100_byte_korean_password_works_in_full(site: Site) -> None:
    assert len(KOREAN_PASSWORD.encode()) >= 100
    assert (await register(site, "민지", KOREAN_PASSWORD))[0] == 201
    assert (await login(site, "민지", KOREAN_PASSWORD))[0] == 200
    # Differs only after byte 72: bcrypt alone would let this in.
    tail = KOREAN_PASSWORD[:-1] + "가"
    assert tail.encode()[:72] == KOREAN_PASSWORD.encode()[:72]
    status, body, _ = await login(site, "민지", tail)
    assert (status, body) == (401, GENERIC)


async def test_nfd_and_case_variants_log_in_as_the_same_user(site: Site) -> None:
    assert (await register(site, "김철수"))[0] == 201
    nfd = unicodedata.normalize("NFD", "김철수")
    assert nfd != "김철수"
    status, body, _ = await login(site, nfd)
    assert (status, body["username"]) == (200, "김철수")
    # Registered as typed on a Mac (NFD): stored and shown in NFC.
    status, body, _ = await register(site, unicodedata.normalize("NFD", "Ünal"))
    assert (status, body["username"]) == (201, "Ünal")
    status, body, _ = await login(site, "üNAL")
    assert (status, body["username"]) == (200, "Ünal")


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        ("", PASSWORD, "username is required"),
        ("two words", PASSWORD, "username may contain only letters"),
        ("x" * 65, PASSWORD, "username is too long (at most 64 characters)"),
        ("kim", "short", "password is too short (at least 8 characters)"),
        ("kim", None, "password is required"),
        ("kim", "가" * 1400, "password is too long (at most 4096 bytes)"),
    ],
)
async def test_unacceptable_usernames_and_passwords_get_clear_400s(
    site: Site, username: str, password: str | None, error: str
) -> None:
    status, body, _ = await register(site, username, password)
    assert status == 400
    assert body["error"].startswith(error)


async def test_closed_registration(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri, registration="closed")
    status, body, _ = await register(site, "kim")
    assert (status, body) == (403, {"error": "registration is closed: ask an admin to add you"})
    assert await site.store.users.list() == []


async def test_invite_only_registration(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(
        start_sims, start_proxy, mongo_uri, registration="invite", invite_codes=("spring-2026",)
    )
    for extra in ({}, {"invite": "wrong"}, {"invite": 42}):
        status, body, _ = await register(site, "kim", **extra)
        assert status == 403
        assert "invite code" in body["error"]
    assert (await register(site, "kim", invite="spring-2026"))[0] == 201


async def test_default_groups_apply_to_self_registered_users(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    site = await start_site(start_sims, start_proxy, mongo_uri, default_groups=("20b",))
    await register(site, "kim")
    token = (await login(site, "kim"))[1]["token"]
    body = {**CHAT, "model": "gpt-oss:120b"}
    async with site.proxy.http.post(site.url + "/api/chat", json=body, headers=bearer(token)) as r:
        assert r.status == 403


async def test_a_seed_bcryptjs_hash_logs_in_and_is_upgraded(site: Site) -> None:
    seed_hash = bcrypt.hashpw(b"seed-password", bcrypt.gensalt(4, prefix=b"2a")).decode()
    assert seed_hash.startswith("$2a$04$")
    user = User(
        id=new_id(), username="park", username_key="park", password_hash=seed_hash, created_at=now()
    )
    await site.store.users.add(user)
    assert (await login(site, "park", "seed-password"))[0] == 200
    upgraded = await site.store.users.get(user.id)
    assert upgraded is not None
    assert upgraded.password_hash.startswith("sha256+$2b$04$")
    assert (await login(site, "park", "seed-password"))[0] == 200
    assert (await login(site, "park", "seed-passwordX"))[0] == 401


async def test_bcrypt_runs_off_the_event_loop(
    start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str
) -> None:
    """While a login's bcrypt (cost 12, ~0.3 s) runs, the proxy keeps answering."""
    site = await start_site(start_sims, start_proxy, mongo_uri, bcrypt_cost=12)
    hashed = await asyncio.to_thread(passwords.hash_password, PASSWORD, 12)
    user = User(id=new_id(), username="kim", username_key="kim", password_hash=hashed)
    await site.store.users.add(user)
    loop = asyncio.get_running_loop()
    started = loop.time()
    logging_in = asyncio.create_task(login(site, "kim"))
    answered: list[float] = []
    while not logging_in.done():
        async with site.proxy.http.get(site.url + "/") as resp:
            assert resp.status == 200
        answered.append(loop.time())
    took = loop.time() - started
    assert (await logging_in)[0] == 200
    assert took > 0.1  # bcrypt really ran at this cost
    gaps = [b - a for a, b in zip([started, *answered], answered, strict=False)]
    # On the loop, bcrypt would freeze every other request for its whole duration.
    assert len(answered) > 5
    assert max(gaps) < took / 2


async def test_a_mongodb_outage_during_login_is_a_clear_503(
    start_sims: StartSims, start_proxy: StartProxy, own_mongo: MongoServer
) -> None:
    uri = own_mongo.uri.replace("/?", "/outage?")
    site = await start_site(start_sims, start_proxy, uri, store={"timeout": 0.5})
    assert (await register(site, "kim"))[0] == 201
    token = (await login(site, "kim"))[1]["token"]
    async with site.proxy.http.get(site.url + "/api/tags", headers=bearer(token)) as r:
        assert r.status == 200  # the proxy now knows kim
    await own_mongo.stop()
    started = time.monotonic()
    status, body, headers = await login(site, "kim")
    assert time.monotonic() - started < 5
    assert (status, body) == (
        503,
        {"error": "the database (MongoDB) is unreachable; try again shortly"},
    )
    assert headers["Retry-After"] == "5"
    assert (await register(site, "lee"))[0] == 503
    # Known users keep working from the directory while the database is away.
    async with site.proxy.http.post(site.url + "/api/chat", json=CHAT, headers=bearer(token)) as r:
        assert r.status == 200
    # An outage is not a failed attempt: nobody gets throttled for it.
    assert site.authenticator.failures["login"] == 0
    await own_mongo.start()
    # pymongo leaks a socket if it is closed while reconnecting to a dead server.
    assert (await login(site, "kim"))[0] == 200


async def test_login_timestamps_are_recorded(site: Site) -> None:
    await register(site, "kim")
    before = datetime.now(UTC)
    await login(site, "kim")
    user = await site.store.users.find("kim")
    assert user is not None
    assert user.last_login_at is not None
    assert user.last_login_at >= before.replace(microsecond=0)
