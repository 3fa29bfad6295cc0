"""The Ollama API of 2026 through the proxy: /api/status, audio transcriptions, cloud
models, the /api/show cache, the fields newer clients send, images in the record, and
model aliases (the one place the proxy rewrites a body)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from conftest import Proxy, StartProxy, StartSims, group, make_settings, until
from identity import Site, bearer, site_settings

from olbproxy.app import RECORDER, STORE
from olbproxy.settings import AliasSettings
from olbproxy.simulator import OllamaSimulator

CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def forwarded(sims: list[OllamaSimulator], path: str) -> list[Any]:
    return [r for s in sims for r in s.requests if r.path == path]


async def test_status_says_cloud_is_disabled_if_any_instance_says_so(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    async with proxy.http.get(proxy.url + "/api/status") as resp:
        assert await resp.json() == {"cloud": {"disabled": False, "source": "none"}}
    sims[1].cloud_disabled = True
    async with proxy.http.get(proxy.url + "/api/status") as resp:
        assert await resp.json() == {"cloud": {"disabled": True, "source": "env"}}


def audio_form(model: str, audio: bytes = b"RIFF....WAVEfmt ") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="note.wav", content_type="audio/wav")
    form.add_field("model", model)
    return form


async def test_a_transcription_is_routed_by_its_form_field(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    small = await start_sims(1, prefix="s", tokens_per_second=0)
    large = await start_sims(1, prefix="l", tokens_per_second=0)
    settings = make_settings(
        group("20b", ("gpt-oss:20b",), small),
        group("120b", ("gpt-oss:120b",), large),
        max_body_bytes=64 * 1024,
    )
    proxy = await start_proxy(settings)
    url = proxy.url + "/v1/audio/transcriptions"
    async with proxy.http.post(url, data=audio_form("gpt-oss:120b")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"text": "[l1] heard 16 bytes"}
    assert len(forwarded(large, "/v1/audio/transcriptions")) == 1
    assert forwarded(small, "/v1/audio/transcriptions") == []
    async with proxy.http.post(url, data=audio_form("nope")) as resp:
        assert resp.status == 404
    async with proxy.http.post(url, data=b"not a form") as resp:
        assert resp.status == 400
    async with proxy.http.post(url, data=audio_form("gpt-oss:20b", b"x" * 100_000)) as resp:
        assert resp.status == 413  # within max_body_bytes, as any body


async def test_a_user_cannot_transcribe_with_a_model_outside_their_groups(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    small, large = await start_sims(2, tokens_per_second=0)
    site = Site(await start_proxy(site_settings(small, large, None)), small, large)
    token = await site.user_with_token("kim", groups=frozenset({"20b"}))
    async with site.proxy.http.post(
        site.url + "/v1/audio/transcriptions",
        data=audio_form("gpt-oss:120b"),
        headers=bearer(token),
    ) as resp:
        assert resp.status == 403
    assert forwarded([large], "/v1/audio/transcriptions") == []


async def test_cloud_models_are_refused_unless_the_group_allows_them(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    local, cloudy = await start_sims(2, tokens_per_second=0)
    settings = make_settings(
        group("cloud", ("*-cloud", "*:cloud"), [cloudy], allow_cloud=True),
        group("local", ("*",), [local]),
    )
    proxy = await start_proxy(settings)
    for model in ("gpt-oss:120b-cloud", "deepseek-v3.1:671b-cloud", "kimi:cloud"):
        async with proxy.http.post(proxy.url + "/api/chat", json={**CHAT, "model": model}) as r:
            # Allowed by the cloud group: forwarded (the simulator does not know it: 404).
            assert r.status == 404
    only_local = await start_proxy(make_settings(group("local", ("*",), [local])))
    async with only_local.http.post(
        only_local.url + "/api/chat", json={**CHAT, "model": "gpt-oss:120b-cloud"}
    ) as resp:
        assert resp.status == 403
        assert "ollama.com" in (await resp.json())["error"]
    assert forwarded([local], "/api/chat") == []


async def test_show_answers_are_reused_for_a_few_seconds(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    answers = []
    for agent in ("continue", "continue", "continue", "GitHubCopilotChat/1"):
        async with proxy.http.post(
            proxy.url + "/api/show", json={"model": "gpt-oss:20b"}, headers={"User-Agent": agent}
        ) as resp:
            assert resp.status == 200
            answers.append(await resp.json())
    assert answers[0] == answers[1] == answers[2]
    # Asked once per User-Agent (Ollama answers GitHub Copilot differently).
    assert len(forwarded(sims, "/api/show")) == 2


async def test_newer_fields_reach_the_instance_as_sent_and_answers_come_back(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    chat = {
        **CHAT,
        "think": "max",
        "logprobs": True,
        "top_logprobs": 3,
        "truncate": False,
        "shift": False,
    }
    raw = json.dumps(chat).encode()
    async with proxy.http.post(proxy.url + "/api/chat", data=raw) as resp:
        assert resp.status == 200
    embed = json.dumps({"model": "gpt-oss:20b", "input": "x", "dimensions": 64}).encode()
    async with proxy.http.post(proxy.url + "/api/embed", data=embed) as resp:
        assert resp.status == 200 and len((await resp.json())["embeddings"][0]) == 64
    assert [r.body for r in forwarded(sims, "/api/chat")] == [raw]
    assert [r.body for r in forwarded(sims, "/api/embed")] == [embed]
    async with proxy.http.get(proxy.url + "/api/ps") as resp:
        assert all("context_length" in m for m in (await resp.json())["models"])


async def stored_messages(proxy: Proxy) -> list[Any]:
    recorder = proxy.app[RECORDER]
    await until(lambda: recorder.idle and recorder.stats["written"] >= 1)
    store = proxy.app[STORE]
    (room,) = await store.rooms.list("anonymous", limit=10)
    return await store.messages.list(room.id, limit=10)


async def test_images_are_recorded_as_references_never_as_base64(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    picture = bytes(range(256)) * 40
    encoded = base64.b64encode(picture).decode()
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": "what is this?", "images": [encoded]}],
    }
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        assert resp.status == 200
    (message,) = await stored_messages(proxy)
    digest = "sha256:" + hashlib.sha256(picture).hexdigest()
    assert message.input_images == [{"digest": digest, "size": len(picture)}]
    assert encoded[:40] not in repr(message)


async def test_thinking_and_tool_calls_with_ids_are_recorded(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    body = {
        **CHAT,
        "think": True,
        "tools": [tool],
        "messages": [{"role": "user", "content": "call: weather in Seoul"}],
    }
    async with proxy.http.post(proxy.url + "/api/chat", json=body) as resp:
        answer = await resp.json()
    (message,) = await stored_messages(proxy)
    assert message.answer["thinking"] == answer["message"]["thinking"] != ""
    calls = message.answer["tool_calls"]
    assert calls == answer["message"]["tool_calls"] and calls[0]["id"].startswith("call_")


ALIASES = (
    AliasSettings(
        name="gpt-oss:20b-high",
        model="gpt-oss:20b",
        defaults={"think": "high", "options": {"num_ctx": 16384, "temperature": 0.2}},
    ),
    AliasSettings(
        name="gpt-oss:20b-pinned",
        model="gpt-oss:20b",
        defaults={"options": {"num_ctx": 8192}},
        force=True,
    ),
)


@pytest.fixture
async def aliased(start_sims: StartSims, start_proxy: StartProxy) -> Site:
    small, large = await start_sims(2, tokens_per_second=0)
    settings = site_settings(small, large, None)
    limited = replace(settings.groups[0], max_num_ctx=16384)
    settings = replace(settings, groups=(limited, settings.groups[1]), aliases=ALIASES)
    return Site(await start_proxy(settings), small, large)


async def test_an_alias_is_listed_for_those_who_may_use_its_model(aliased: Site) -> None:
    kim = await aliased.user_with_token("kim", groups=frozenset({"20b"}))
    lee = await aliased.user_with_token("lee", groups=frozenset({"120b"}))
    for token, expected in ((kim, True), (lee, False)):
        async with aliased.proxy.http.get(aliased.url + "/api/tags", headers=bearer(token)) as r:
            names = {m["name"] for m in (await r.json())["models"]}
        assert ("gpt-oss:20b-high" in names) is expected
        async with aliased.proxy.http.get(aliased.url + "/v1/models", headers=bearer(token)) as r:
            ids = {m["id"] for m in (await r.json())["data"] or []}
        assert ("gpt-oss:20b-high" in ids) is expected


async def test_an_alias_request_is_rewritten_once_and_the_client_s_values_win(
    aliased: Site,
) -> None:
    kim = await aliased.user_with_token("kim", groups=frozenset({"20b"}))
    http, url = aliased.proxy.http, aliased.url
    body = {**CHAT, "model": "gpt-oss:20b-high", "options": {"temperature": 0.9}}
    async with http.post(url + "/api/chat", json=body, headers=bearer(kim)) as resp:
        assert resp.status == 200
    sent = json.loads(forwarded([aliased.small], "/api/chat")[-1].body)
    assert sent["model"] == "gpt-oss:20b" and sent["think"] == "high"
    assert sent["options"] == {"num_ctx": 16384, "temperature": 0.9}
    # A forced alias's values win over the client's.
    body = {**CHAT, "model": "gpt-oss:20b-pinned", "options": {"num_ctx": 4096}}
    async with http.post(url + "/api/chat", json=body, headers=bearer(kim)) as resp:
        assert resp.status == 200
    sent = json.loads(forwarded([aliased.small], "/api/chat")[-1].body)
    assert sent["options"] == {"num_ctx": 8192}
    # The rewritten body is what the limits see: the client's 32k beats the alias's
    # default, and is refused by the group's max_num_ctx.
    body = {**CHAT, "model": "gpt-oss:20b-high", "options": {"num_ctx": 32768}}
    async with http.post(url + "/api/chat", json=body, headers=bearer(kim)) as resp:
        assert resp.status == 400 and "num_ctx" in (await resp.json())["error"]
    # And it is what is recorded.
    recorder = aliased.proxy.app[RECORDER]
    await until(lambda: recorder.idle and recorder.stats["written"] >= 2)


async def test_an_alias_outside_the_callers_groups_is_refused(aliased: Site) -> None:
    lee = await aliased.user_with_token("lee", groups=frozenset({"120b"}))
    body = {**CHAT, "model": "gpt-oss:20b-high"}
    async with aliased.proxy.http.post(
        aliased.url + "/api/chat", json=body, headers=bearer(lee)
    ) as resp:
        assert resp.status == 403
    async with aliased.proxy.http.get(
        aliased.url + "/v1/models/gpt-oss:20b-high", headers=bearer(lee)
    ) as resp:
        assert resp.status == 403
    assert forwarded([aliased.small], "/api/chat") == []
