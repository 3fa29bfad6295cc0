"""The admin page in a real browser: the live load and the users."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from conftest import StartProxy, StartSims
from identity import CHAT, Site, bearer, start_site
from pages import Browsing, expect, user_page

# The page reads the status every 3 s: a change shows within two refreshes.
LIVE = 7_000


async def admin_page(chromium: Any, site: Site) -> Browsing:
    b = await user_page(chromium, site, "boss", role="admin")
    await b.page.click(".nav >> text=Admin")
    await expect(b.page.locator("h1")).to_have_text("Live load")
    return b


async def test_the_live_load_follows_the_proxy(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    b = await admin_page(chromium, site)
    page = b.page
    small = page.locator("article.group[data-group='20b']")
    await expect(small.locator("dd.in-flight")).to_have_text("0 / 1")
    await expect(small.locator("dd.healthy")).to_have_text("1 / 1")
    await expect(page.locator("article.group[data-group='120b'] .models")).to_have_text(
        "gpt-oss:120b"
    )

    token = await site.token("boss")
    site.small.faults.hang = True

    async def hold() -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(site.url + "/api/chat", json=CHAT, headers=bearer(token)) as r,
        ):
            await r.read()

    holder = asyncio.create_task(hold())
    await expect(small.locator("dd.in-flight")).to_have_text("1 / 1", timeout=LIVE)
    await expect(small.locator("tbody tr td").nth(2)).to_have_text("1 / 1")
    await b.shot("admin")
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder  # its connection is closed before the test ends
    await expect(small.locator("dd.in-flight")).to_have_text("0 / 1", timeout=LIVE)

    await site.large.stop()  # an instance dies: the page says so
    large = page.locator("article.group[data-group='120b']")
    await expect(large.locator(".badge")).to_have_text("down", timeout=LIVE)
    await expect(large.locator("dd.healthy")).to_have_text("0 / 1")
    b.assert_clean()


async def test_an_admin_disables_a_user_and_sets_their_groups(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None, cache_seconds=300)
    kim = await site.user_with_token("kim")
    b = await admin_page(chromium, site)
    page = b.page
    row = page.locator("tr[data-user='kim']")
    await expect(row.locator(".badge")).to_have_text("active")
    await expect(page.locator("tr[data-user='boss'] button.danger")).to_have_count(0)

    await row.locator("text=Disable").click()
    await expect(row.locator(".badge")).to_have_text("disabled")
    async with site.proxy.http.get(site.url + "/api/tags", headers=bearer(kim)) as resp:
        assert resp.status == 403  # at once, not after auth.cache_seconds
    await row.locator("text=Enable").click()
    await expect(row.locator(".badge")).to_have_text("active")

    await row.locator("input[data-every]").uncheck()
    await row.locator("input[value='120b']").uncheck()
    await row.locator("text=Save groups").click()
    await expect(page.locator(".user-message")).to_have_text("kim saved.")
    async with site.proxy.http.get(site.url + "/api/tags", headers=bearer(kim)) as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == ["gpt-oss:20b"]
    user = await site.store.users.find("kim")
    assert user is not None and user.groups == frozenset({"20b"})
    await b.reload()
    await expect(row.locator("input[value='120b']")).not_to_be_checked()
    await expect(row.locator("input[value='20b']")).to_be_checked()
    b.assert_clean()
