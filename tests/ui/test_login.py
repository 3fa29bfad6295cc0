"""Sign-up, login and the session, in a real browser (Chromium) against a running proxy."""

from __future__ import annotations

import re
from typing import Any

from conftest import StartProxy, StartSims
from identity import PASSWORD, Site, start_site
from pages import expect, log_in, open_ui


async def site_with(start_sims: StartSims, start_proxy: StartProxy, **auth: Any) -> Site:
    return await start_site(start_sims, start_proxy, None, **auth)


async def test_sign_up_then_chat_at_once(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_with(start_sims, start_proxy)
    b = await open_ui(chromium, site)
    page = b.page
    await expect(page.locator("h1")).to_have_text("Log in to olbproxy")
    await b.shot("login")
    await page.click("text=Sign up")
    await expect(page.locator("h1")).to_have_text("Create an account")
    await expect(page.locator("#auth-invite")).to_have_count(0)  # open registration
    await page.fill("#auth-username", "kim")
    await page.fill("#auth-password", "short")
    await page.fill("#auth-password2", "short")
    await page.click("form button[type=submit]")
    await expect(page.locator(".form-message")).to_have_text(
        "The password needs at least 8 characters."
    )
    await page.fill("#auth-password", PASSWORD)
    await page.fill("#auth-password2", PASSWORD)
    await page.click("form button[type=submit]")
    await expect(page.locator(".who .username")).to_have_text("kim")
    assert await site.store.users.find("kim") is not None
    # The same name again is refused in words.
    other = await open_ui(chromium, site, path="/ui/#/signup")
    await other.page.fill("#auth-username", "KIM")
    await other.page.fill("#auth-password", PASSWORD)
    await other.page.fill("#auth-password2", PASSWORD)
    await other.page.click("form button[type=submit]")
    await expect(other.page.locator(".form-message")).to_have_text("That username is taken.")
    b.assert_clean()
    other.assert_clean("409")  # the browser logs the refused request itself


async def test_wrong_password_then_throttled_with_the_wait(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_with(start_sims, start_proxy, login_attempts=2)
    await site.accounts.add_user("kim", PASSWORD)
    b = await open_ui(chromium, site)
    page = b.page
    for _ in range(2):
        await page.fill("#auth-username", "kim")
        await page.fill("#auth-password", "not it")
        await page.click("form button[type=submit]")
        await expect(page.locator(".form-message")).to_have_text("Wrong username or password.")
        await page.fill("#auth-password", "")  # so the next message is a new one
    await page.fill("#auth-password", PASSWORD)
    await page.click("form button[type=submit]")
    message = page.locator(".form-message")
    await expect(message).to_have_text(
        re.compile(r"^Too many attempts\. Try again in \d+ seconds\.$")
    )
    seconds = int((await message.inner_text()).split(" in ")[1].split()[0])
    assert 250 <= seconds <= 300  # auth.login_window is 300 s
    b.assert_clean("401", "429")


async def test_closed_and_invite_only_registration(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    closed = await site_with(start_sims, start_proxy, registration="closed")
    b = await open_ui(chromium, closed, path="/ui/#/signup")
    await expect(b.page.locator(".closed")).to_have_text(
        "Registration is closed. Ask an admin to add you."
    )
    await expect(b.page.locator("#auth-username")).to_have_count(0)

    invite = await site_with(
        start_sims, start_proxy, registration="invite", invite_codes=("team-2026",)
    )
    b = await open_ui(chromium, invite, path="/ui/#/signup")
    page = b.page
    await page.fill("#auth-username", "kim")
    await page.fill("#auth-password", PASSWORD)
    await page.fill("#auth-password2", PASSWORD)
    await page.fill("#auth-invite", "guess")
    await page.click("form button[type=submit]")
    await expect(page.locator(".form-message")).to_have_text("That invite code is not valid.")
    await page.fill("#auth-invite", "team-2026")
    await page.click("form button[type=submit]")
    await expect(page.locator(".who .username")).to_have_text("kim")
    b.assert_clean("403")


async def test_the_session_survives_a_reload_and_ends_with_logout(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_with(start_sims, start_proxy)
    await site.accounts.add_user("kim", PASSWORD)
    b = await open_ui(chromium, site)
    await log_in(b, "kim")
    stored = await b.page.evaluate(
        "[sessionStorage.getItem('olbproxy.session'), localStorage.getItem('olbproxy.session')]"
    )
    assert stored[0] is not None and stored[1] is None  # not remembered: this tab only
    await b.reload()
    await expect(b.page.locator(".who .username")).to_have_text("kim")
    # A new tab of the same browser does not inherit a tab's session ...
    other = await open_ui(chromium, site, context=b.page.context)
    await expect(other.page.locator("h1")).to_have_text("Log in to olbproxy")
    # ... unless the user asked to be remembered.
    await log_in(other, "kim", remember=True)
    third = await open_ui(chromium, site, context=b.page.context)
    await expect(third.page.locator(".who .username")).to_have_text("kim")

    await third.page.click("text=Log out")
    await expect(third.page.locator("h1")).to_have_text("Log in to olbproxy")
    assert await third.page.evaluate("localStorage.getItem('olbproxy.session')") is None
    await third.reload()
    await expect(third.page.locator("h1")).to_have_text("Log in to olbproxy")
    for tab in (b, other, third):
        tab.assert_clean()


async def test_an_expired_session_goes_back_to_login_with_a_word(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_with(start_sims, start_proxy)
    await site.accounts.add_user("kim", PASSWORD)
    b = await open_ui(chromium, site)
    await log_in(b, "kim")
    # The proxy stops accepting the token (a changed secret does the same).
    await b.page.evaluate(
        """() => {
          const s = JSON.parse(sessionStorage.getItem('olbproxy.session'));
          s.token = s.token.slice(0, -2) + 'xx';
          sessionStorage.setItem('olbproxy.session', JSON.stringify(s));
        }"""
    )
    await b.reload()
    await expect(b.page.locator("h1")).to_have_text("Log in to olbproxy")
    await expect(b.page.locator(".form-message")).to_have_text(
        "Your session has ended. Please log in again."
    )
    b.assert_clean("401")


async def test_korean_from_the_browser_and_switchable(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_with(start_sims, start_proxy)
    await site.accounts.add_user("김민수", PASSWORD)
    b = await open_ui(chromium, site, locale="ko-KR")
    page = b.page
    await expect(page.locator("html")).to_have_attribute("lang", "ko")
    await expect(page.locator("h1")).to_have_text("olbproxy 로그인")
    await expect(page.locator("label[for=auth-password]")).to_have_text("비밀번호")
    await page.fill("#auth-username", "김민수")
    await page.fill("#auth-password", "틀린 비밀번호")
    await page.click("form button[type=submit]")
    await expect(page.locator(".form-message")).to_have_text(
        "사용자 이름 또는 비밀번호가 틀렸습니다."
    )
    await b.shot("login-ko")
    await log_in(b, "김민수")
    await expect(page.locator(".nav a").first).to_have_text("채팅")
    await expect(page.locator("button.send")).to_have_text("보내기")
    await expect(page.locator("#prompt")).to_have_attribute("placeholder", "메시지를 입력하세요…")
    await b.shot("chat-ko")

    await page.select_option("select.language", "en")
    await expect(page.locator("button.send")).to_have_text("Send")
    await expect(page.locator(".nav a").first).to_have_text("Chat")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await b.reload()  # the choice is remembered over the browser's language
    await expect(page.locator("button.send")).to_have_text("Send")
    await page.select_option("select.language", "ko")
    await expect(page.locator(".rooms-head h2")).to_have_text("대화 목록")
    b.assert_clean("401")
