"""Helpers for the browser tests: a page on the proxy's /ui/, with its mistakes collected.

The tests run Debian's chromium through Playwright (the ``chromium`` fixture in
tests/conftest.py skips without it, unless OLBPROXY_REQUIRE_BROWSER=1). The proxy runs
with authentication on and the memory store, in front of simulated Ollama backends.
Screenshots of the main pages go to tests/ui/screenshots/ (git-ignored) for a person to
look at.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import browser_missing
from identity import PASSWORD, Site

if TYPE_CHECKING:
    from playwright.async_api import ViewportSize

from olbproxy.store import Room

# Without playwright (which `make test` always installs) these modules are skipped with
# the reason shown; under OLBPROXY_REQUIRE_BROWSER=1 (CI) the import below fails instead.
# A missing chromium is the chromium fixture's to report.
MISSING = browser_missing()
if MISSING and "playwright" in MISSING and os.environ.get("OLBPROXY_REQUIRE_BROWSER") != "1":
    pytest.skip(MISSING, allow_module_level=True)

from playwright.async_api import Browser, Page, expect  # noqa: E402

__all__ = ["expect"]

SCREENSHOTS = Path(__file__).parent / "screenshots"
# Chromium on a busy 2-core machine: give the page time before calling it wrong.
expect.set_options(timeout=10_000)
DESKTOP: ViewportSize = {"width": 1280, "height": 820}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class Browsing:
    """One tab on the page, and everything that went wrong in it."""

    page: Page
    site: Site
    errors: list[str] = field(default_factory=list)  # uncaught exceptions, console errors
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt: never expected

    def assert_clean(self, *allowed: str) -> None:
        """No uncaught exception, no console error (but ``allowed`` ones), no dialog."""
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert unexpected == [], unexpected
        assert self.dialogs == []

    async def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

    async def reload(self) -> None:
        await self.page.reload()
        await self.page.wait_for_selector(".top .brand")


async def open_ui(
    browser: Browser,
    site: Site,
    *,
    locale: str = "en-US",
    viewport: ViewportSize | None = None,
    context: Any = None,
    path: str = "/ui/",
) -> Browsing:
    """A new tab (in a new browser context unless one is given) at ``path``."""
    if context is None:
        context = await browser.new_context(locale=locale, viewport=viewport or DESKTOP)
    page = await context.new_page()
    browsing = Browsing(page, site)
    page.on("pageerror", lambda error: browsing.errors.append(f"pageerror: {error}"))

    def console(message: Any) -> None:
        if message.type == "error":
            browsing.errors.append(f"console: {message.text}")

    page.on("console", console)

    async def dialog(d: Any) -> None:
        browsing.dialogs.append(f"{d.type}: {d.message}")
        await d.dismiss()

    page.on("dialog", dialog)
    await page.goto(site.url + path)
    await page.wait_for_selector(".top .brand")
    return browsing


async def log_in(
    browsing: Browsing, username: str, password: str = PASSWORD, *, remember: bool = False
) -> None:
    page = browsing.page
    await page.fill("#auth-username", username)
    await page.fill("#auth-password", password)
    if remember:
        await page.check("input[name=remember]")
    await page.click("form button[type=submit]")
    await expect(page.locator(".who .username")).to_have_text(username)
    await expect(page.locator("#prompt")).to_be_visible()


async def user_page(browser: Browser, site: Site, username: str, **kw: Any) -> Browsing:
    """A user added to the store, logged in on a new tab."""
    await site.accounts.add_user(username, PASSWORD, **kw)
    browsing = await open_ui(browser, site)
    await log_in(browsing, username)
    return browsing


def answer(browsing: Browsing, index: int = -1) -> Any:
    """The locator of an assistant message (the last by default)."""
    return browsing.page.locator("article.msg.assistant").nth(index)


async def ask(browsing: Browsing, text: str) -> None:
    await browsing.page.fill("#prompt", text)
    await browsing.page.keyboard.press("Enter")


async def answered(browsing: Browsing, index: int = -1, *, within_ms: float = 15_000) -> str:
    """Waits for the answer to finish; returns its text."""
    message = answer(browsing, index)
    await expect(message).to_have_attribute("data-state", "done", timeout=within_ms)
    text: str = await message.locator(".msg-content").inner_text()
    return text


async def room_of(browsing: Browsing) -> str:
    """The id of the room open in the page, from its address (#/chat/<id>)."""
    url: str = browsing.page.url
    match = re.search(r"#/chat/([\w.:-]+)$", url)
    assert match, url
    return match.group(1)


async def stored(site: Site, room_id: str, turns: int) -> Room:
    """Waits until the proxy's writer has filed ``turns`` turns in the room."""
    async with asyncio.timeout(10):
        while True:
            room = await site.store.rooms.get(room_id)
            if room is not None and room.turns >= turns:
                return room
            await asyncio.sleep(0.02)  # the writer batches every ~50 ms; nothing to wait on
