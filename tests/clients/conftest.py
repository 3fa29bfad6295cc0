"""The ``clients`` fixture: the proxy of scene.py, its users and their keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest
from conftest import StartProxy, StartSims, group, make_settings
from identity import PASSWORD, Site, auth_settings, store_settings

from .scene import BIG, EMBEDDING, SMALL, Clients

T = TypeVar("T")


@pytest.fixture
async def clients(start_sims: StartSims, start_proxy: StartProxy) -> Clients:
    small, large = await start_sims(2, tokens_per_second=0)
    settings = make_settings(
        group("20b", (SMALL, EMBEDDING), [small]),
        group("120b", (BIG,), [large], slots=1, queue_size=0),
        auth=auth_settings(),
        store=store_settings(None),
    )
    site = Site(await start_proxy(settings), small, large)
    accounts = site.accounts
    await accounts.add_user("kim", PASSWORD)
    await accounts.add_user("lee", PASSWORD, groups=frozenset({"120b"}))
    await accounts.add_user("root", PASSWORD, role="admin")
    _, key = await accounts.create_key("kim", label="clients")
    _, limited = await accounts.create_key("lee", label="clients")
    _, admin = await accounts.create_key("root", label="clients")
    return Clients(site, key, limited, admin)


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[T], T]]:
    """``closing(model)``: close the ollama clients a LangChain or LlamaIndex model made.

    Those libraries never close them; a user's process just exits, but here their
    sockets would outlive the test and fail a later one (``filterwarnings = error``).
    """
    owners: list[object] = []

    def own(owner: T) -> T:
        owners.append(owner)
        return owner

    yield own
    for owner in owners:
        sync = getattr(owner, "_client", None)
        if sync is not None:
            sync.close()
        asynchronous = getattr(owner, "_async_client", None)
        if asynchronous is not None:
            await asynchronous.close()
