"""Revocation that really revokes: a password change ends older tokens, and the loop
that refreshes users and keys survives an unexpected error."""

from __future__ import annotations

from collections.abc import Collection

import pytest
from conftest import StartProxy, StartSims, until
from identity import PASSWORD, Site, bearer, start_site

from olbproxy.app import SUPERVISOR
from olbproxy.store import User

CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def status_with(site: Site, credential: str) -> int:
    async with site.proxy.http.post(
        site.url + "/api/chat", json=CHAT, headers=bearer(credential)
    ) as resp:
        return resp.status


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy) -> Site:
    return await start_site(start_sims, start_proxy, None, cache_seconds=0.2)


async def test_a_password_change_revokes_the_tokens_issued_before_it(site: Site) -> None:
    old = await site.user_with_token("kim")
    other = await site.user_with_token("lee")
    assert await status_with(site, old) == 200
    await site.accounts.set_password("kim", "a new passphrase")
    # Within auth.cache_seconds, as for a disabled account.
    await until(lambda: site.authenticator.directory.users[old_user_id(site)].token_epoch == 1)
    async with site.proxy.http.post(site.url + "/api/chat", json=CHAT, headers=bearer(old)) as resp:
        assert resp.status == 401
        assert "revoked" in (await resp.json())["error"]
    fresh = await site.token("kim", "a new passphrase")
    assert await status_with(site, fresh) == 200
    assert await status_with(site, other) == 200  # nobody else's tokens


def old_user_id(site: Site) -> str:
    return next(u.id for u in site.authenticator.directory.users.values() if u.username == "kim")


async def test_the_identity_refresh_survives_an_unexpected_error(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    await site.accounts.add_user("kim", PASSWORD)
    record, key = await site.accounts.create_key("kim")
    assert await status_with(site, key) == 200
    users = site.store.users
    real = users.get_many
    failures = 0

    async def flaky(ids: Collection[str]) -> list[User]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bug in the refresh")
        return await real(ids)

    monkeypatch.setattr(users, "get_many", flaky)
    await until(lambda: failures == 1)
    await site.accounts.revoke_key(record.id)
    # The loop died once and was restarted: the revocation still takes effect.
    await until(lambda: site.authenticator.directory.keys[record.id].revoked_at is not None)
    assert await status_with(site, key) == 401
    job = site.proxy.app[SUPERVISOR].snapshot()["identities"]
    assert job["restarts"] == 1 and "a bug in the refresh" in job["last_error"]
