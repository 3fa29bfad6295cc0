"""The real `ollama` Python client (sync and async) against the proxy, as users run it."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import ollama
import pytest

from .scene import (
    BIG,
    EMBEDDING,
    SMALL,
    STATUSES,
    Clients,
    refused,
)

MESSAGES = [{"role": "user", "content": "안녕하세요"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def drain(stream: AsyncIterator[ollama.ChatResponse], into: list[Any]) -> None:
    async for chunk in stream:
        into.append(chunk)


async def test_sync_chat_whole_and_streamed_is_recorded_under_the_keys_user(
    clients: Clients,
) -> None:
    def run() -> tuple[ollama.ChatResponse, list[ollama.ChatResponse]]:
        with ollama.Client(host=clients.url, headers=auth(clients.key)) as client:
            whole = client.chat(model=SMALL, messages=MESSAGES)
            parts = list(client.chat(model=SMALL, messages=MESSAGES, stream=True))
        return whole, parts

    whole, parts = await asyncio.to_thread(run)
    assert whole.message.content and "You said: 안녕하세요" in whole.message.content
    assert (whole.prompt_eval_count, whole.eval_count) == (1, 12)
    assert len(parts) > 2 and "".join(p.message.content or "" for p in parts) == (
        whole.message.content
    )
    assert parts[-1].done and parts[-1].eval_count == 12

    records = await clients.recorded("kim", lambda m: len(m) == 2)
    assert {(m.endpoint, m.user_name, m.status) for m in records} == {("/api/chat", "kim", "done")}
    assert records[0].answer is not None
    assert records[0].answer["content"] == whole.message.content


async def test_the_environment_alone_points_the_client_at_the_proxy(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's way: OLLAMA_HOST and OLLAMA_API_KEY, nothing in the code.
    monkeypatch.setenv("OLLAMA_HOST", clients.url)
    monkeypatch.setenv("OLLAMA_API_KEY", clients.key)
    async with ollama.AsyncClient() as client:
        answer = await client.chat(model=SMALL, messages=MESSAGES)
    assert answer.message.content and "안녕하세요" in answer.message.content


async def test_async_generate_whole_and_streamed(clients: Clients) -> None:
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.key)) as client:
        whole = await client.generate(model=BIG, prompt="why is the sky blue")
        assert whole.done and whole.eval_count == 12 and "sky" in whole.response
        chunks = [c async for c in await client.generate(model=BIG, prompt="hi", stream=True)]
    assert len(chunks) > 2 and chunks[-1].done and chunks[-1].done_reason == "stop"
    assert "".join(c.response for c in chunks).startswith("[sim2] You said: hi")
    assert clients.requests_to("/api/generate") == 2


async def test_thinking_comes_back_apart_from_the_answer(clients: Clients) -> None:
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.key)) as client:
        answer = await client.chat(model=SMALL, messages=MESSAGES, think=True)
    assert answer.message.thinking and answer.message.thinking.startswith("[sim1] is thinking")
    assert answer.message.content and "thinking" not in answer.message.content


async def test_tool_calls_come_back_as_calls(clients: Clients) -> None:
    def weather(city: str) -> str:
        """Today's weather in a city."""
        return "sunny"

    messages = [{"role": "user", "content": "call: Seoul"}]
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.key)) as client:
        answer = await client.chat(model=SMALL, messages=messages, tools=[weather])
    (call,) = answer.message.tool_calls or []
    assert call.function.name == "weather" and call.function.arguments == {"query": "Seoul"}


async def test_embed_list_show_ps_see_only_the_users_groups(clients: Clients) -> None:
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.key)) as client:
        embedded = await client.embed(model=EMBEDDING, input=["a", "b"])
        assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 768
        legacy = await client.embeddings(model=EMBEDDING, prompt="a")
        assert len(legacy.embedding) == 768
        listed = await client.list()
        assert {m.model for m in listed.models} == {SMALL, BIG, "embeddinggemma:latest"}
        shown = await client.show(SMALL)
        assert shown.modelinfo and "completion" in (shown.capabilities or [])
        await client.chat(model=SMALL, messages=MESSAGES)
        running = await client.ps()
        assert SMALL in {m.model for m in running.models}
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.limited_key)) as client:
        theirs = await client.list()
    assert [m.model for m in theirs.models] == [BIG]


async def test_an_admin_pulls_with_progress_and_deletes(clients: Clients) -> None:
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.admin_key)) as client:
        statuses = [p.status async for p in await client.pull(SMALL, stream=True)]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        await client.delete(SMALL)
        with pytest.raises(ollama.ResponseError) as info:
            await client.delete(SMALL)
    assert info.value.status_code == 404


async def test_a_user_may_not_pull(clients: Clients) -> None:
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.key)) as client:
        with pytest.raises(ollama.ResponseError) as info:
            await client.pull(SMALL)
    assert info.value.status_code == 403 and "for admins" in info.value.error
    assert clients.requests_to("/api/pull") == 0


async def test_an_admins_blob_upload_and_create_meet_on_one_backend(clients: Clients) -> None:
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.admin_key)) as client:
        data = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB, streamed through
        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(data)
            f.flush()
            digest = await client.create_blob(f.name)
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
        progress = [
            p.status
            async for p in await client.create(
                model=SMALL, files={"model.gguf": digest}, stream=True
            )
        ]
    assert progress[-1] == "success"
    assert any(r.path.startswith("/api/blobs/") for r in clients.small.requests)
    assert any(r.path == "/api/create" for r in clients.small.requests)


async def test_a_stream_that_fails_midway_raises_response_error(clients: Clients) -> None:
    clients.small.faults.fail_after_tokens = 2
    seen: list[ollama.ChatResponse] = []
    async with ollama.AsyncClient(host=clients.url, headers=auth(clients.key)) as client:
        stream = await client.chat(model=SMALL, messages=MESSAGES, stream=True)
        with pytest.raises(ollama.ResponseError) as info:
            await drain(stream, seen)
    assert len(seen) == 2 and info.value.status_code == -1
    assert "model runner has unexpectedly stopped" in info.value.error


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_raise_response_error_with_status_and_message(
    clients: Clients, status: int
) -> None:
    async with (
        refused(clients, status) as refusal,
        ollama.AsyncClient(host=clients.url, headers=auth(refusal.key)) as client,
    ):
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model=refusal.model, messages=MESSAGES)
        # The stream's request goes out on the first read: that read raises.
        stream = await client.chat(model=refusal.model, messages=MESSAGES, stream=True)
        with pytest.raises(ollama.ResponseError) as streamed:
            await drain(stream, [])
    for error in (info.value, streamed.value):
        assert error.status_code == status
        assert error.error.startswith(refusal.message)


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_raise_in_the_sync_client_too(clients: Clients, status: int) -> None:
    def run(key: str, model: str) -> ollama.ResponseError:
        with (
            ollama.Client(host=clients.url, headers=auth(key)) as client,
            pytest.raises(ollama.ResponseError) as info,
        ):
            client.generate(model=model, prompt="hi")
        return info.value

    async with refused(clients, status) as refusal:
        error = await asyncio.to_thread(run, refusal.key, refusal.model)
    assert error.status_code == status and error.error.startswith(refusal.message)
