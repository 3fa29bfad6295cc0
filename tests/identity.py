"""Helpers for tests of authentication: settings with auth on, a proxy with users in it."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from conftest import Proxy, StartProxy, StartSims, group, make_settings

from olbproxy.app import AUTHENTICATOR, STORE
from olbproxy.auth.accounts import Accounts
from olbproxy.auth.authenticator import Authenticator
from olbproxy.settings import AuthSettings, Settings, StoreSettings
from olbproxy.simulator import OllamaSimulator
from olbproxy.store import Store

SECRET = secrets.token_urlsafe(48)
PASSWORD = "correct horse battery"
CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
BIG_CHAT = {**CHAT, "model": "gpt-oss:120b"}


def database_of(uri: str) -> str:
    return urlsplit(uri).path.strip("/")


def store_settings(mongo_uri: str | None, **overrides: Any) -> StoreSettings:
    if mongo_uri is None:
        return StoreSettings(backend="memory", **overrides)
    # Recording never waits for a busy relay here: the test's own process (client,
    # simulators and proxy in one) is what the pacing would see. test_handoff.py tests
    # the waiting with a load it sets.
    overrides.setdefault("defer", 0.0)
    return StoreSettings(
        backend="mongodb",
        mongodb_uri=mongo_uri,
        database=database_of(mongo_uri),
        timeout=overrides.pop("timeout", 2.0),
        **overrides,
    )


def auth_settings(**overrides: Any) -> AuthSettings:
    """Auth on, a strong secret, bcrypt's cheapest cost so tests stay fast, and open
    sign-up (shipped closed) so the tests of registration can register."""
    defaults = {"jwt_secret": SECRET, "bcrypt_cost": 4, "registration": "open"}
    return replace(AuthSettings(), **{**defaults, **overrides})


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@dataclass
class Site:
    """A proxy with auth on in front of the seed's two groups (one simulator each)."""

    proxy: Proxy
    small: OllamaSimulator
    large: OllamaSimulator

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def authenticator(self) -> Authenticator:
        return self.proxy.app[AUTHENTICATOR]

    @property
    def accounts(self) -> Accounts:
        return self.authenticator.accounts

    @property
    def store(self) -> Store:
        return self.proxy.app[STORE]

    async def token(self, username: str, password: str = PASSWORD) -> str:
        body = {"username": username, "password": password}
        async with self.proxy.http.post(self.url + "/api/auth/login", json=body) as resp:
            assert resp.status == 200, await resp.text()
            token: str = (await resp.json())["token"]
            return token

    async def user_with_token(self, username: str, **kw: Any) -> str:
        await self.accounts.add_user(username, PASSWORD, **kw)
        return await self.token(username)


def site_settings(
    small: OllamaSimulator,
    large: OllamaSimulator,
    mongo_uri: str | None,
    *,
    store: dict[str, Any] | None = None,
    **auth: Any,
) -> Settings:
    return make_settings(
        group("20b", ("gpt-oss:20b",), [small]),
        group("120b", ("gpt-oss:120b",), [large]),
        auth=auth_settings(**auth),
        store=store_settings(mongo_uri, **(store or {})),
    )


async def start_site(
    start_sims: StartSims,
    start_proxy: StartProxy,
    mongo_uri: str | None,
    *,
    store: dict[str, Any] | None = None,
    **auth: Any,
) -> Site:
    small, large = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(site_settings(small, large, mongo_uri, store=store, **auth))
    return Site(proxy, small, large)
