"""The chat and the rooms in a real browser: streaming, rooms kept and continued, Stop,
a full group waited out, hostile model output, models per group, a phone-sized screen."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
from conftest import StartProxy, StartSims, group, make_settings
from identity import PASSWORD, Site, auth_settings, bearer, start_site, store_settings
from pages import PHONE, answer, answered, ask, expect, log_in, open_ui, room_of, stored
from pages import user_page as logged_in


async def memory_site(start_sims: StartSims, start_proxy: StartProxy, **auth: Any) -> Site:
    return await start_site(start_sims, start_proxy, None, **auth)


async def site_of(
    start_sims: StartSims, start_proxy: StartProxy, *, auth: bool = True, **small: Any
) -> Site:
    """The seed's two groups, one simulator each, with the 20b group's settings given."""
    sims = await start_sims(2, tokens_per_second=0)
    settings = make_settings(
        group("20b", ("gpt-oss:20b",), sims[:1], **small),
        group("120b", ("gpt-oss:120b",), sims[1:]),
        store=store_settings(None),
        **({"auth": auth_settings()} if auth else {}),
    )
    return Site(await start_proxy(settings), *sims)


def chats_sent(site: Site) -> list[dict[str, Any]]:
    """The bodies of the chat requests the 20b backend received."""
    return [json.loads(r.body) for r in site.small.requests if r.path == "/api/chat"]


async def test_an_answer_streams_in_and_its_room_can_be_reloaded_and_continued(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await memory_site(start_sims, start_proxy)
    sim = site.small
    sim.first_token_delay = 0.8  # long enough to see the spinner
    sim.tokens_per_second = 12
    sim.answer_tokens = 36  # three seconds of tokens
    b = await logged_in(chromium, site, "kim")
    page = b.page

    # Shift+Enter is a new line, Enter sends.
    await page.fill("#prompt", "Plan a **trip** to Busan")
    await page.press("#prompt", "Shift+Enter")
    await page.keyboard.type("in `May`")
    assert await page.input_value("#prompt") == "Plan a **trip** to Busan\nin `May`"
    await page.keyboard.press("Enter")

    reply = answer(b)
    await expect(reply.locator(".spinner")).to_be_visible()
    await expect(reply.locator(".msg-status")).to_have_text("Waiting for the model…")
    await expect(page.locator("button.stop")).to_be_visible()
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(reply.locator(".spinner")).to_have_count(0)
    first = len(await reply.locator(".msg-content").inner_text())
    # The answer grows while the stream is still under way.
    await page.wait_for_function(
        """(first) => {
          const m = [...document.querySelectorAll('article.msg.assistant')].pop();
          return m.dataset.state === 'streaming'
            && m.querySelector('.msg-content').innerText.length > first + 20;
        }""",
        arg=first,
    )
    assert sim.stats.completed == 0
    text = await answered(b)
    assert sim.stats.completed == 1
    assert text.startswith("[sim1] You said: Plan a trip to Busan in May")
    # Markdown rendered; thinking apart from the answer and collapsed.
    await expect(reply.locator(".msg-content strong").first).to_have_text("trip")
    await expect(reply.locator(".msg-content code").first).to_have_text("May")
    thinking = reply.locator("details.thinking")
    await expect(thinking).to_be_visible()
    assert await thinking.get_attribute("open") is None
    await expect(thinking.locator(".thinking-text")).to_be_hidden()
    await thinking.locator("summary").click()
    await expect(thinking.locator(".thinking-text")).to_have_text("[sim1] is thinking")
    sent = chats_sent(site)
    assert sent[0]["think"] is True and sent[0]["stream"] is True
    await b.shot("chat")

    # The page named the room (X-Room-Id) with an id of its own making.
    room_id = await room_of(b)
    assert len(room_id) == 32
    await stored(site, room_id, turns=1)
    sim.first_token_delay = 0
    sim.tokens_per_second = 0
    await b.reload()
    item = page.locator(f"li.room[data-room='{room_id}']")
    await expect(item.locator(".room-name")).to_have_text("Plan a **trip** to Busan in `May`")
    await expect(item).to_have_class("room active")
    await expect(page.locator("article.msg.user")).to_have_text(
        ["You" + "Plan a **trip** to Busan\nin `May`"]
    )
    await expect(answer(b).locator(".msg-content")).to_have_text(text.strip())

    await ask(b, "And in June?")
    second = await answered(b)
    assert second.startswith("[sim1] You said: And in June?")
    # The whole history went to the model, and the turn is filed in the same room.
    history = chats_sent(site)[-1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    # The answer as the model wrote it (Markdown), not as the page shows it.
    assert history[1]["content"].startswith("[sim1] You said: Plan a **trip** to Busan in `May`")
    assert len(history[1]["content"].split()) == 36
    room = await stored(site, room_id, turns=2)
    assert room.turns == 2
    assert len(await site.store.rooms.list(room.user_id, limit=10)) == 1
    b.assert_clean()


async def test_rooms_newest_first_renamed_and_deleted(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await memory_site(start_sims, start_proxy)
    b = await logged_in(chromium, site, "kim")
    page = b.page
    ids = []
    for text in ("first question", "second question"):
        await page.click("button.new-chat")
        await ask(b, text)
        await answered(b)
        ids.append(await room_of(b))
        await stored(site, ids[-1], turns=1)
    await b.reload()
    names = page.locator("li.room .room-name")
    await expect(names).to_have_text(["second question", "first question"])
    await b.shot("rooms")

    first = page.locator(f"li.room[data-room='{ids[0]}']")
    await first.locator("button.rename").click()
    field = page.locator("li.room .room-edit input")
    await expect(field).to_be_focused()
    await field.fill("  Busan   in May ")
    await field.press("Enter")
    await expect(first.locator(".room-name")).to_have_text("Busan in May")
    room = await site.store.rooms.get(ids[0])
    assert room is not None and room.title == "Busan in May"

    second = page.locator(f"li.room[data-room='{ids[1]}']")
    await second.locator("button.remove").click()
    await expect(second.locator(".room-confirm")).to_contain_text("Delete “second question”")
    await second.locator("text=Cancel").click()
    await expect(second.locator(".room-name")).to_have_text("second question")
    await second.locator("button.remove").click()
    await second.locator(".room-confirm button.danger").click()
    await expect(page.locator(f"li.room[data-room='{ids[1]}']")).to_have_count(0)
    assert await site.store.rooms.get(ids[1]) is None
    await b.reload()
    await expect(names).to_have_text(["Busan in May"])
    b.assert_clean()


async def test_stop_ends_the_answer_and_the_backend_stops(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await memory_site(start_sims, start_proxy)
    sim = site.small
    sim.tokens_per_second = 5
    sim.answer_tokens = 500
    b = await logged_in(chromium, site, "kim")
    await ask(b, "tell me a long story")
    reply = answer(b)
    await expect(reply.locator(".msg-content")).to_contain_text("[sim1] You said")
    await b.page.click("button.stop")
    await sim.wait_until(lambda: sim.stats.cancelled == 1)
    assert sim.stats.completed == 0
    await expect(reply).to_have_attribute("data-state", "stopped")
    await expect(reply.locator(".msg-status")).to_have_text("Stopped.")
    assert (await reply.locator(".msg-content").inner_text()).startswith("[sim1] You said")
    await expect(b.page.locator("button.send")).to_be_visible()
    await expect(b.page.locator("#prompt")).to_be_focused()
    b.assert_clean()


async def test_a_full_group_is_said_and_waited_out(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_of(start_sims, start_proxy, slots=1, queue_size=0)
    small = site.small
    other = await site.user_with_token("lee")

    # Someone else's stream holds the group's only slot.
    small.faults.hang = True

    async def hold() -> None:
        body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hold"}]}
        async with (
            aiohttp.ClientSession() as http,
            http.post(site.url + "/api/chat", json=body, headers=bearer(other)) as r,
        ):
            await r.read()

    holder = asyncio.create_task(hold())
    await small.wait_until(lambda: small.stats.active == 1)
    small.faults.hang = False

    b = await logged_in(chromium, site, "kim")
    await ask(b, "are you free?")
    status = answer(b).locator(".msg-status")
    await expect(status).to_contain_text("All slots for this model are busy. Trying again in")
    await b.shot("chat-group-full")
    holder.cancel()  # the other stream ends: the slot is free
    with contextlib.suppress(asyncio.CancelledError):
        await holder  # its connection is closed before the test ends
    await small.wait_until(lambda: small.stats.cancelled == 1)
    text = await answered(b, within_ms=12_000)
    assert text.startswith("[sim1] You said: are you free?")
    # The refusals never reached the backend: one hold, one answer.
    assert [m["messages"][-1]["content"] for m in chats_sent(site)] == ["hold", "are you free?"]
    b.assert_clean("503")


async def test_model_output_is_rendered_but_never_executed(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    """The sanitiser alone holds: the page runs with its Content-Security-Policy bypassed
    (the policy is the second wall, checked in test_ui_site.py)."""
    site = await memory_site(start_sims, start_proxy)
    await site.accounts.add_user("kim", PASSWORD)
    prompt = (
        '**bold** <img src=x onerror=alert(1)> <img src=y onerror="window.pwned=1"> '
        "<script>window.pwned=2</script> <a href=javascript:alert(3)>link</a> "
        "<svg onload=alert(4)> <iframe src=javascript:alert(5)></iframe>"
    )
    # "[sim1] You said:" and the prompt, once: the answer is the prompt's words.
    site.small.answer_tokens = 3 + len(prompt.split())
    context = await chromium.new_context(bypass_csp=True, locale="en-US")
    b = await open_ui(chromium, site, context=context)
    await log_in(b, "kim")
    await ask(b, prompt)
    await answered(b)
    reply = answer(b).locator(".msg-content")
    await expect(reply.locator("strong")).to_have_text("bold")  # Markdown still works
    await expect(reply.locator("img")).to_have_count(2)
    hostile = await b.page.evaluate(
        """() => {
          const answer = [...document.querySelectorAll('.msg.assistant .msg-content')].pop();
          const handlers = [...answer.querySelectorAll('*')]
            .flatMap((el) => [...el.attributes].map((a) => a.name))
            .filter((name) => name.startsWith('on'));
          return {
            handlers,
            scripts: answer.querySelectorAll('script, iframe, svg').length,
            links: [...answer.querySelectorAll('a')].map((a) => a.getAttribute('href')),
            pwned: window.pwned ?? null,
          };
        }"""
    )
    assert hostile == {"handlers": [], "scripts": 0, "links": [None], "pwned": None}
    # What the user typed is shown as text, exactly.
    await expect(b.page.locator("article.msg.user .msg-text")).to_have_text(prompt)
    await b.reload()  # the stored answer is rendered the same way
    await expect(answer(b).locator(".msg-content strong")).to_have_text("bold")
    assert await b.page.evaluate("window.pwned ?? null") is None
    assert b.dialogs == []
    # Only the harmless image requests (src=x, src=y: 401, not files) may be logged.
    b.assert_clean("Failed to load resource")


async def test_a_user_sees_only_the_models_of_their_groups(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await memory_site(start_sims, start_proxy)
    kim = await logged_in(chromium, site, "kim", groups=frozenset({"20b"}))
    options = kim.page.locator("#model option")
    await expect(options).to_have_text(["gpt-oss:20b"])
    lee = await logged_in(chromium, site, "lee")
    await expect(lee.page.locator("#model option")).to_have_text(["gpt-oss:20b", "gpt-oss:120b"])
    await lee.page.select_option("#model", "gpt-oss:120b")
    await ask(lee, "big one")
    assert (await answered(lee)).startswith("[sim2] You said: big one")
    kim.assert_clean()
    lee.assert_clean()


async def test_usable_on_a_phone(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await memory_site(start_sims, start_proxy)
    await site.accounts.add_user("kim", PASSWORD, role="admin")
    b = await open_ui(chromium, site, viewport=PHONE)
    await b.shot("login-phone")
    await log_in(b, "kim")
    page = b.page
    await expect(page.locator(".rooms")).to_be_hidden()
    await ask(b, "hello from a phone")
    await answered(b)
    await b.shot("chat-phone")
    send = await page.locator("button.send").bounding_box()
    assert send is not None and send["x"] + send["width"] <= PHONE["width"]
    await page.click("button.rooms-toggle")
    await expect(page.locator(".rooms")).to_be_visible()
    await expect(page.locator("button.rooms-toggle")).to_have_attribute("aria-expanded", "true")
    await page.click("button.new-chat")
    await expect(page.locator(".rooms")).to_be_hidden()
    await expect(page.locator(".empty-chat")).to_be_visible()
    for name, ready in (("chat", "#prompt"), ("account", ".snippet"), ("admin", "article.group")):
        await page.goto(f"{site.url}/ui/#/{name}")
        await expect(page.locator(ready).first).to_be_visible()
        # Nothing wider than the screen: wide tables and code scroll inside themselves.
        overflow = await page.evaluate(
            """() => Math.max(
              document.scrollingElement.scrollWidth - document.documentElement.clientWidth,
              document.querySelector('.main').scrollWidth
                - document.querySelector('.main').clientWidth)"""
        )
        assert overflow <= 0, name
        if name != "chat":
            await b.shot(f"{name}-phone")
    b.assert_clean()


async def test_with_authentication_off_the_page_opens_on_the_chat(
    chromium: Any, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    site = await site_of(start_sims, start_proxy, auth=False)
    b = await open_ui(chromium, site)
    await expect(b.page.locator(".nav a")).to_have_text(["Chat", "Admin"])
    await expect(b.page.locator(".who")).to_have_text("")
    await ask(b, "no login here")
    assert (await answered(b)).startswith("[sim1] You said: no login here")
    b.assert_clean()
