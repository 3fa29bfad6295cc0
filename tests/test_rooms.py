"""The rooms API and named rooms, with authentication on and the store in MongoDB."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from conftest import StartProxy, StartSims, group, make_settings, until
from identity import PASSWORD, Site, bearer, start_site

from olbproxy.app import RECORDER
from olbproxy.persistence.recording import Recording

MODEL = "gpt-oss:20b"


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str) -> Site:
    return await start_site(start_sims, start_proxy, mongo_uri)


def recorder_of(site: Site) -> Recording:
    return site.proxy.app[RECORDER]


async def settled(site: Site) -> None:
    recorder = recorder_of(site)
    await until(lambda: recorder.idle, within=10)


async def call(
    site: Site, method: str, path: str, token: str | None, body: Any = None, **headers: str
) -> tuple[int, Any]:
    if token is not None:
        headers.update(bearer(token))
    async with site.proxy.http.request(method, site.url + path, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def chat(
    site: Site, token: str, text: str, history: list[Any] | None = None, /, **h: str
) -> tuple[int, list[Any]]:
    messages = [*(history or []), {"role": "user", "content": text}]
    body = {"model": MODEL, "messages": messages, "stream": False}
    status, data = await call(site, "POST", "/api/chat", token, body, **h)
    if status == 200:
        messages.append(data["message"])
    return status, messages


def chats_seen(site: Site) -> int:
    return sum(1 for r in site.small.requests if r.path == "/api/chat")


async def test_a_user_lists_their_rooms_newest_first_a_page_at_a_time(site: Site) -> None:
    kim = await site.user_with_token("kim")
    lee = await site.user_with_token("lee")
    _, history = await chat(site, kim, "first conversation")
    await chat(site, kim, "follow-up", history)
    await chat(site, kim, "second conversation")
    await chat(site, lee, "lee's own")
    await settled(site)

    status, page = await call(site, "GET", "/api/rooms?limit=1", kim)
    assert status == 200
    (newest,) = page["rooms"]
    assert (newest["title"], newest["turns"], newest["model"]) == ("second conversation", 1, MODEL)
    assert set(newest) == {"id", "title", "model", "created_at", "updated_at", "turns"}
    assert newest["created_at"].endswith("Z") and page["next_cursor"]
    status, rest = await call(site, "GET", f"/api/rooms?limit=1&cursor={page['next_cursor']}", kim)
    assert [(r["title"], r["turns"]) for r in rest["rooms"]] == [("first conversation", 2)]
    assert rest["next_cursor"] is None
    _, theirs = await call(site, "GET", "/api/rooms", lee)
    assert [r["title"] for r in theirs["rooms"]] == ["lee's own"]


async def test_a_rooms_messages_come_oldest_first_with_their_answers(site: Site) -> None:
    kim = await site.user_with_token("kim")
    _, history = await chat(site, kim, "안녕")
    _, history = await chat(site, kim, "잘 지내?", history)
    await settled(site)
    _, listing = await call(site, "GET", "/api/rooms", kim)
    room_id = listing["rooms"][0]["id"]

    status, page = await call(site, "GET", f"/api/rooms/{room_id}/messages?limit=1", kim)
    assert status == 200
    assert page["room"]["id"] == room_id and page["room"]["turns"] == 2
    (first,) = page["messages"]
    assert (first["seq"], first["input"], first["status"], first["kind"]) == (
        1,
        "안녕",
        "done",
        "turn",
    )
    assert first["answer"]["content"] == history[1]["content"]
    assert first["counters"]["eval_count"] and first["ttft_ms"] is not None
    path = f"/api/rooms/{room_id}/messages?cursor={page['next_cursor']}"
    _, rest = await call(site, "GET", path, kim)
    assert [m["input"] for m in rest["messages"]] == ["잘 지내?"]
    assert rest["next_cursor"] is None


async def test_other_peoples_rooms_are_403_and_unknown_ones_404(site: Site) -> None:
    kim = await site.user_with_token("kim")
    lee = await site.user_with_token("lee")
    root = await site.user_with_token("root", role="admin")
    await chat(site, kim, "private")
    await settled(site)
    _, listing = await call(site, "GET", "/api/rooms", kim)
    room = listing["rooms"][0]["id"]
    # Admins too: conversations are private.
    for token in (lee, root):
        for method, path, body in (
            ("GET", f"/api/rooms/{room}/messages", None),
            ("PATCH", f"/api/rooms/{room}", {"title": "mine now"}),
            ("DELETE", f"/api/rooms/{room}", None),
        ):
            status, data = await call(site, method, path, token, body)
            assert (status, data) == (403, {"error": f"room {room} belongs to another user"})
    assert (await call(site, "GET", "/api/rooms/nope/messages", kim))[0] == 404
    assert (await call(site, "DELETE", "/api/rooms/nope", kim))[0] == 404
    assert (await call(site, "GET", "/api/rooms", None))[0] == 401


async def test_rename_and_delete_a_room(site: Site) -> None:
    kim = await site.user_with_token("kim")
    await chat(site, kim, "to be renamed")
    await settled(site)
    _, listing = await call(site, "GET", "/api/rooms", kim)
    room = listing["rooms"][0]["id"]

    status, renamed = await call(
        site, "PATCH", f"/api/rooms/{room}", kim, {"title": " 여행  계획 "}
    )
    assert (status, renamed["title"], renamed["id"]) == (200, "여행 계획", room)
    for bad in ({"title": ""}, {"title": 3}, {}, {"title": "x" * 201}):
        assert (await call(site, "PATCH", f"/api/rooms/{room}", kim, bad))[0] == 400
    status, _ = await call(site, "DELETE", f"/api/rooms/{room}", kim)
    assert status == 204
    assert (await call(site, "GET", f"/api/rooms/{room}/messages", kim))[0] == 404
    assert await site.store.messages.list(room, limit=10) == []
    assert (await call(site, "GET", "/api/rooms", kim))[1]["rooms"] == []


async def test_bad_paging_parameters_are_400(site: Site) -> None:
    kim = await site.user_with_token("kim")
    for query in ("limit=0", "limit=201", "limit=ten", "cursor=%%%", "cursor=bm9waXBl"):
        status, data = await call(site, "GET", f"/api/rooms?{query}", kim)
        assert status == 400, query
        assert data["error"]


async def test_a_message_cursor_we_could_not_have_issued_is_400(site: Site) -> None:
    kim = await site.user_with_token("kim")
    await chat(site, kim, "hello")
    await settled(site)
    room = (await call(site, "GET", "/api/rooms", kim))[1]["rooms"][0]["id"]
    forged = [
        "1795486422878|0|ab",  # fine: a page after the start, still 200
        "1795486422878|ab",  # the rooms' shape
        "1795486422878|x|ab",
        "1795486422878|-1|ab",
        "1795486422878|" + "9" * 40 + "|ab",  # more than MongoDB's 8-byte integers
        "99999999999999999|1|ab",  # after the year 9999
        "|||",
    ]
    for text in forged:
        cursor = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
        status, data = await call(site, "GET", f"/api/rooms/{room}/messages?cursor={cursor}", kim)
        assert status == (200 if text == forged[0] else 400), (text, status, data)


async def test_a_named_room_is_opened_for_its_caller_and_refused_to_others(site: Site) -> None:
    kim = await site.user_with_token("kim")
    lee = await site.user_with_token("lee")
    assert (await chat(site, kim, "plan the trip", **{"X-Room-Id": "trip-2026"}))[0] == 200
    # A new history, same room: the name wins.
    assert (await chat(site, kim, "packing list", **{"X-Room-Id": "trip-2026"}))[0] == 200
    await settled(site)
    _, page = await call(site, "GET", "/api/rooms/trip-2026/messages", kim)
    assert page["room"]["turns"] == 2
    assert [m["input"] for m in page["messages"]] == ["plan the trip", "packing list"]

    before = chats_seen(site)
    status, _ = await chat(site, lee, "let me in", **{"X-Room-Id": "trip-2026"})
    assert status == 403  # the owner was known in memory
    recorder_of(site).filing.forget("trip-2026")  # as after a restart: ask the database
    status, _ = await chat(site, lee, "let me in", **{"X-Room-Id": "trip-2026"})
    assert status == 403
    assert chats_seen(site) == before  # no backend saw either request
    for bad in ("has space", "x" * 129, "ünïcode", "-leading-dash", ""):
        status, _ = await chat(site, kim, "hi", **{"X-Room-Id": bad})
        assert status == 400, bad
    assert chats_seen(site) == before


async def test_open_webui_chats_and_their_background_tasks(site: Site) -> None:
    await site.accounts.add_user("owui", PASSWORD)
    _, key = await site.accounts.create_key("owui", label="open-webui", front_end=True)
    chat_id = "6f9e2c3a-0d4b-4e51-9a0e-2b7f1c9d8e10"
    headers = {
        **bearer(key),
        "X-OpenWebUI-User-Id": "u-1",
        "X-OpenWebUI-User-Name": quote("김민지", safe=" "),
        "X-OpenWebUI-Chat-Id": chat_id,
    }
    body = {"model": MODEL, "messages": [{"role": "user", "content": "부산 여행 추천"}]}
    async with site.proxy.http.post(site.url + "/api/chat", json=body, headers=headers) as resp:
        assert resp.status == 200
        answer = "".join(
            json.loads(line)["message"]["content"] for line in (await resp.read()).splitlines()
        )
    title_prompt = (
        "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat "
        f"history.\n### Chat History:\n<chat_history>\nUSER: 부산 여행 추천\nASSISTANT: {answer}"
        "\n</chat_history>"
    )
    task = {"model": MODEL, "messages": [{"role": "user", "content": title_prompt}]}
    async with site.proxy.http.post(
        site.url + "/api/chat", json={**task, "stream": False}, headers=headers
    ) as resp:
        assert resp.status == 200
    await settled(site)

    (room,) = await site.store.rooms.list("owui:u-1", limit=5)
    assert (room.id, room.title, room.turns, room.user_name) == (
        chat_id,
        "부산 여행 추천",
        1,
        "김민지",
    )
    turns = await site.store.messages.list(chat_id, limit=10)
    assert [m.kind for m in turns] == ["turn"]
    every = await site.store.messages.list(chat_id, limit=10, kinds=("turn", "task"))
    assert [(m.kind, m.task, m.seq) for m in every] == [("turn", None, 1), ("task", "title", None)]
    # Rooms belong to the end user: the front-end reads them on their behalf, while the
    # key's owner (Open WebUI's own calls, without user headers) sees none of them.
    async with site.proxy.http.get(site.url + "/api/rooms", headers=headers) as resp:
        assert [r["id"] for r in (await resp.json())["rooms"]] == [chat_id]
    async with site.proxy.http.get(site.url + "/api/rooms", headers=bearer(key)) as resp:
        assert (await resp.json())["rooms"] == []


async def test_with_authentication_off_everything_is_the_open_users(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", (MODEL,), sims)))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "open"}], "stream": False}
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 200
    recorder = proxy.app[RECORDER]
    await until(lambda: recorder.idle)
    async with proxy.http.get(proxy.url + "/api/rooms") as resp:
        assert resp.status == 200
        assert [r["title"] for r in (await resp.json())["rooms"]] == ["open"]
