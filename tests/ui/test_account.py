"""The account page in a real browser: API keys (create, copy once, revoke) and password."""

from __future__ import annotations

from typing import Any

from conftest import StartProxy, StartSims
from identity import PASSWORD, Site, bearer, start_site
from pages import Browsing, expect, user_page


async def tags(site: Site, credential: str) -> tuple[int, list[str]]:
    async with site.proxy.http.get(site.url + "/api/tags", headers=bearer(credential)) as resp:
        if resp.status != 200:
            return resp.status, []
        return 200, sorted(m["name"] for m in (await resp.json())["models"])


async def account_page(chromium: Any, site: Site, username: str, **kw: Any) -> Browsing:
    b = await user_page(chromium, site, username, **kw)
    await b.page.click(".nav >> text=Account")
    await expect(b.page.locator("h1")).to_have_text("API keys")
    return b


async def test_a_key_is_shown_once_copied_used_and_revoked(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    b = await account_page(chromium, site, "kim")
    page = b.page
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await expect(page.locator(".keys")).to_have_text("You have no API keys yet.")
    await page.fill("#key-label", "laptop script")
    await page.click("text=Create key")
    field = page.locator(".fresh-key input.key-value")
    await expect(field).to_be_visible()
    key = await field.input_value()
    assert key.startswith("olb_")
    await expect(page.locator(".fresh-key .warning")).to_contain_text("shown only once")
    # The lines to paste carry the key.
    snippets = page.locator(".snippet pre")
    await expect(snippets).to_have_count(6)
    for text in await snippets.all_inner_texts():
        assert key in text
    assert (
        f'OpenAI(base_url="{site.url}/v1", api_key="{key}")' in await snippets.nth(4).inner_text()
    )
    await page.click(".fresh-key button.primary")
    await expect(page.locator(".fresh-key .copied")).to_have_text("Copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == key
    await b.shot("account-new-key")
    assert await tags(site, key) == (200, ["gpt-oss:120b", "gpt-oss:20b"])
    # Nowhere in the browser's storage.
    storage = await page.evaluate("JSON.stringify({...localStorage, ...sessionStorage})")
    assert key not in storage

    row = page.locator("tr[data-key]")
    await expect(row.locator("td").first).to_have_text("laptop script")
    await page.click(".nav >> text=Chat")
    await page.click(".nav >> text=Account")
    await expect(page.locator(".fresh-key")).to_be_hidden()  # once means once
    for text in await page.locator(".snippet pre").all_inner_texts():
        assert key not in text and "olb_..." in text

    await row.locator("text=Revoke").click()
    await row.locator("button.danger").click()
    await expect(row.locator("td").nth(4)).to_contain_text("revoked")
    assert (await tags(site, key))[0] == 401
    b.assert_clean()


async def test_a_key_limited_to_one_group(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    b = await account_page(chromium, site, "kim")
    page = b.page
    await page.check("fieldset.groups input[value='20b']")
    await page.click("text=Create key")
    key = await page.locator(".fresh-key input.key-value").input_value()
    assert await tags(site, key) == (200, ["gpt-oss:20b"])
    await expect(page.locator("tr[data-key] td").nth(2)).to_have_text("20b")
    # A user with one group is not offered a choice.
    lee = await account_page(chromium, site, "lee", groups=frozenset({"120b"}))
    await expect(lee.page.locator("fieldset.groups")).to_have_count(0)
    b.assert_clean()
    lee.assert_clean()


async def test_changing_the_password_keeps_the_page_working(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    b = await account_page(chromium, site, "kim")
    page = b.page
    message = page.locator("form:has(#password-current) .form-message")
    await page.fill("#password-current", "not my password")
    await page.fill("#password-new", "a new long password")
    await page.fill("#password-again", "a new long password")
    await page.click("text=Change password >> nth=-1")
    await expect(message).to_have_text("The current password is wrong.")
    await page.fill("#password-current", PASSWORD)
    await page.fill("#password-again", "something else")
    await page.click("button:has-text('Change password')")
    await expect(message).to_have_text("The two passwords differ.")
    await page.fill("#password-again", "a new long password")
    await page.click("button:has-text('Change password')")
    await expect(message).to_have_text("Password changed.")
    await site.token("kim", "a new long password")  # the new one logs in
    await b.reload()  # and the page carries on with the token it was given
    await expect(page.locator(".who .username")).to_have_text("kim")
    await expect(page.locator(".keys")).to_have_text("You have no API keys yet.")
    b.assert_clean("403")


async def test_the_admin_page_is_for_admins_only(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await start_site(start_sims, start_proxy, None)
    b = await user_page(chromium, site, "kim")
    await expect(b.page.locator(".nav a")).to_have_text(["Chat", "Account"])
    await b.page.goto(site.url + "/ui/#/admin")
    await expect(b.page.locator("#prompt")).to_be_visible()
    assert b.page.url.endswith("#/chat")
    b.assert_clean()
