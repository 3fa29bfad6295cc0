"""The real `ollama` Python client (0.6.3) against the proxy, as users will run it."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile

import ollama
import pytest
from conftest import Proxy, StartProxy, StartSims, group, make_settings

from olbproxy.simulator import OllamaSimulator

Seed = tuple[Proxy, list[OllamaSimulator], list[OllamaSimulator]]
MESSAGES = [{"role": "user", "content": "안녕하세요"}]


async def test_sync_chat_stream_and_not(seed: Seed) -> None:
    proxy, _, _ = seed

    def run() -> tuple[str, list[str]]:
        with ollama.Client(host=proxy.url) as client:
            whole = client.chat(model="gpt-oss:20b", messages=MESSAGES)
            stream = client.chat(model="gpt-oss:20b", messages=MESSAGES, stream=True)
            parts = [c.message.content or "" for c in stream]
        return whole.message.content or "", parts

    whole, parts = await asyncio.to_thread(run)
    assert "안녕하세요" in whole
    assert len(parts) > 2 and "안녕하세요" in "".join(parts)


async def test_async_generate_stream_and_not(seed: Seed) -> None:
    proxy, _, large = seed
    async with ollama.AsyncClient(host=proxy.url) as client:
        whole = await client.generate(model="gpt-oss:120b", prompt="why is the sky blue")
        assert whole.done and whole.eval_count and "sky" in whole.response
        chunks = [
            c async for c in await client.generate(model="gpt-oss:120b", prompt="hi", stream=True)
        ]
        assert chunks[-1].done and chunks[-1].done_reason == "stop"
        assert any(r.path == "/api/generate" for s in large for r in s.requests)


async def test_async_chat_through_the_openai_free_native_api_sets_thinking(seed: Seed) -> None:
    proxy, _, _ = seed
    async with ollama.AsyncClient(host=proxy.url) as client:
        answer = await client.chat(model="gpt-oss:20b", messages=MESSAGES, think=True)
        assert answer.message.thinking


async def test_embed_list_show_ps(start_sims: StartSims, start_proxy: StartProxy) -> None:
    sims = await start_sims(2, tokens_per_second=0)
    proxy = await start_proxy(
        make_settings(group("20b", ("gpt-oss:20b",), sims[:1]), group("rest", ("*",), sims[1:]))
    )
    async with ollama.AsyncClient(host=proxy.url) as client:
        embedded = await client.embed(model="embeddinggemma", input=["a", "b"])
        assert len(embedded.embeddings) == 2
        legacy = await client.embeddings(model="embeddinggemma", prompt="a")
        assert legacy.embedding
        listed = await client.list()
        assert {m.model for m in listed.models} >= {"gpt-oss:20b", "embeddinggemma:latest"}
        shown = await client.show("gpt-oss:20b")
        assert shown.modelinfo and "completion" in (shown.capabilities or [])
        await client.chat(model="gpt-oss:20b", messages=MESSAGES)
        running = await client.ps()
        assert "gpt-oss:20b" in {m.model for m in running.models}


async def test_pull_streams_progress_and_delete_removes(seed: Seed) -> None:
    proxy, small, _ = seed
    async with ollama.AsyncClient(host=proxy.url) as client:
        statuses = [p.status async for p in await client.pull("gpt-oss:20b", stream=True)]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        # Shared model store: one pull on one instance of the group, not three.
        assert sum(1 for s in small for r in s.requests if r.path == "/api/pull") == 1
        await client.delete("gpt-oss:20b")
        with pytest.raises(ollama.ResponseError) as info:
            await client.delete("gpt-oss:20b")
        assert info.value.status_code == 404


async def test_blob_upload_then_create_meet_on_one_backend(seed: Seed) -> None:
    proxy, small, _ = seed
    async with ollama.AsyncClient(host=proxy.url) as client:
        data = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB, streamed through
        with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
            f.write(data)
            f.flush()
            digest = await client.create_blob(f.name)
        assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
        progress = [
            p.status
            async for p in await client.create(
                model="gpt-oss:20b", files={"model.gguf": digest}, stream=True
            )
        ]
        assert progress[-1] == "success"
        holders = [s for s in small if any(r.path.startswith("/api/blobs/") for r in s.requests)]
        creators = [s for s in small if any(r.path == "/api/create" for r in s.requests)]
        assert len(holders) == 1 and creators == holders


async def test_stream_error_line_becomes_response_error(
    start_sims: StartSims, start_proxy: StartProxy
) -> None:
    sims = await start_sims(1, tokens_per_second=0)
    sims[0].faults.fail_after_tokens = 2
    proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), sims)))
    async with ollama.AsyncClient(host=proxy.url) as client:
        with pytest.raises(ollama.ResponseError) as info:
            async for _ in await client.chat(model="gpt-oss:20b", messages=MESSAGES, stream=True):
                pass
        assert info.value.status_code == -1


async def test_unknown_model_is_a_404_response_error(seed: Seed) -> None:
    proxy, _, _ = seed
    async with ollama.AsyncClient(host=proxy.url) as client:
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="llama3", messages=MESSAGES)
        assert info.value.status_code == 404
        assert info.value.error == "model 'llama3' not found"
