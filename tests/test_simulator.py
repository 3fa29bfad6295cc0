"""The Ollama simulator, seen from real clients: the ``ollama`` package and raw aiohttp."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import ollama
import pytest

from olbproxy.simulator import DEFAULT_MODELS, OllamaSimulator, SimulatedModel
from olbproxy.simulator.wire import FOREVER, Rejected, allowed_host, keep_alive_seconds

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture
async def sim() -> AsyncIterator[OllamaSimulator]:
    simulator = OllamaSimulator(tokens_per_second=0, answer_tokens=6)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(sim: OllamaSimulator) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=sim.url) as async_client:
        yield async_client


def lines_of(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    parts = body.split(b"\n")[:-1]
    assert all(parts), "NDJSON must not contain blank lines"
    return [json.loads(part) for part in parts]


def sse_data(body: bytes) -> list[str]:
    assert body.endswith(b"\n\n")
    frames = body.split(b"\n\n")[:-1]
    return [line[6:].decode() for f in frames for line in f.split(b"\n") if line[:6] == b"data: "]


async def collect(stream: AsyncIterator[ollama.GenerateResponse], into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.response or "")


async def post(
    http: aiohttp.ClientSession, sim: OllamaSimulator, path: str, body: object
) -> tuple[int, str | None, bytes]:
    async with http.post(sim.url + path, json=body) as response:
        return response.status, response.headers.get("Content-Type"), await response.read()


# -- plain routes, gin texts, Host check -------------------------------------------------


async def test_root_says_ollama_is_running_without_newline(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(sim.url + "/") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await response.read() == b"Ollama is running"
    async with http.head(sim.url + "/") as response:
        assert response.status == 200
        assert await response.read() == b""


async def test_unknown_path_and_wrong_method_get_gin_texts(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(sim.url + "/api/nope") as response:
        assert (response.status, response.headers["Content-Type"]) == (404, "text/plain")
        assert await response.read() == b"404 page not found"
    async with http.get(sim.url + "/api/chat") as response:
        assert (response.status, response.headers["Content-Type"]) == (405, "text/plain")
        assert await response.read() == b"405 method not allowed"
    async with http.head(sim.url + "/api/ps") as response:
        assert response.status == 405


async def test_foreign_host_header_gets_403_with_empty_body(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(sim.url + "/api/tags", headers={"Host": "example.com"}) as response:
        assert response.status == 403
        assert await response.read() == b""
    async with http.get(sim.url + "/api/tags", headers={"Host": "localhost:11434"}) as response:
        assert response.status == 200
    sim.enforce_host = False
    async with http.get(sim.url + "/api/tags", headers={"Host": "example.com"}) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("", True),
        ("localhost", True),
        ("LOCALHOST:11434", True),
        ("127.0.0.1:80", True),
        ("[::1]:11434", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("192.168.0.9:1", True),
        ("0.0.0.0", True),
        ("box.localhost", True),
        ("printer.local", True),
        ("example.com", False),
        ("8.8.8.8:11434", False),
    ],
)
def test_host_check_matches_ollama_on_loopback(host: str, allowed: bool) -> None:
    assert allowed_host(host) is allowed


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("-1m", FOREVER),
        (-1, FOREVER),
    ],
)
def test_keep_alive_reads_go_durations_and_seconds(
    value: str | float | None, seconds: float | None
) -> None:
    assert keep_alive_seconds(value) == seconds


def test_keep_alive_rejects_what_go_rejects() -> None:
    with pytest.raises(Rejected, match='time: invalid duration "soon"'):
        keep_alive_seconds("soon")


async def test_version_and_tags_have_ollama_shapes(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.version = "0.12.7"
    async with http.get(sim.url + "/api/version") as response:
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await response.read() == b'{"version":"0.12.7"}'
    async with http.get(sim.url + "/api/tags") as response:
        tags = await response.json()
    entry = tags["models"][0]
    assert list(entry) == [
        "name",
        "model",
        "modified_at",
        "size",
        "digest",
        "details",
        "capabilities",
    ]
    assert [m["name"] for m in tags["models"]] == [m.name for m in DEFAULT_MODELS]
    assert entry["digest"] == hashlib.sha256(b"gpt-oss:20b").hexdigest()
    assert STAMP.match(entry["modified_at"])
    assert entry["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "gptoss",
        "families": ["gptoss"],
        "parameter_size": "20.9B",
        "quantization_level": "MXFP4",
    }


# -- chat and generate: bytes on the wire ----------------------------------------------


async def test_streamed_chat_is_exact_ndjson_in_go_field_order(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hello there"}]}
    status, content_type, raw = await post(http, sim, "/api/chat", body)
    assert (status, content_type) == (200, "application/x-ndjson")
    assert raw.startswith(b'{"model":"gpt-oss:20b","created_at":"')
    chunks = lines_of(raw)
    assert len(chunks) == 7
    first, last = chunks[0], chunks[-1]
    assert list(first) == ["model", "created_at", "message", "done"]
    assert first["message"] == {"role": "assistant", "content": "[sim] "}
    assert STAMP.match(str(first["created_at"]))
    assert "".join(c["message"]["content"] for c in chunks) == (
        "[sim] You said: hello there [sim] "
    )
    assert list(last) == [
        "model",
        "created_at",
        "message",
        "done",
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ]
    assert last["done"] is True
    assert last["done_reason"] == "stop"
    assert (last["eval_count"], last["prompt_eval_count"]) == (6, 2)


async def test_go_escapes_html_characters(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-oss:20b", "prompt": "<b>&", "stream": False}
    status, content_type, raw = await post(http, sim, "/api/generate", body)
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert b"\\u003cb\\u003e\\u0026" in raw
    assert b"<" not in raw
    assert not raw.endswith(b"\n")


async def test_generate_final_chunk_carries_context_unless_raw(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-oss:20b", "prompt": "hi"}
    final = lines_of((await post(http, sim, "/api/generate", body))[2])[-1]
    assert list(final)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]
    assert all(isinstance(token, int) for token in final["context"])
    raw_final = lines_of((await post(http, sim, "/api/generate", body | {"raw": True}))[2])[-1]
    assert "context" not in raw_final


async def test_headers_wait_for_the_first_token_and_tokens_are_paced(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.first_token_delay = 0.25
    sim.tokens_per_second = 40
    sim.answer_tokens = 4
    started = time.monotonic()
    body = {"model": "gpt-oss:20b", "prompt": "pace"}
    async with http.post(sim.url + "/api/generate", json=body) as response:
        headers_at = time.monotonic() - started
        chunks = lines_of(await response.read())
    ended_at = time.monotonic() - started
    assert headers_at >= 0.24
    # Four tokens and the final chunk at 40 tokens/s: the last one 0.1 s after the first.
    assert ended_at >= 0.24 + 0.09
    final = chunks[-1]
    assert 0.09e9 <= final["eval_duration"] < 0.5e9
    assert final["prompt_eval_duration"] >= 0.24e9


async def test_num_predict_cuts_the_answer_with_done_reason_length(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    answer = await client.generate(model="gpt-oss:20b", prompt="hi", options={"num_predict": 2})
    assert answer.response == "[sim] You "
    assert (answer.done_reason, answer.eval_count) == ("length", 2)


async def test_think_streams_three_thinking_chunks_first(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    chunks = [
        chunk
        async for chunk in await client.chat(
            model="gpt-oss:20b",
            messages=[{"role": "user", "content": "q"}],
            think=True,
            stream=True,
        )
    ]
    assert [c.message.thinking for c in chunks[:3]] == ["[sim] ", "is ", "thinking "]
    assert chunks[3].message.content == "[sim] "
    whole = await client.generate(model="gpt-oss:20b", prompt="q", think="low")
    assert whole.thinking == "[sim] is thinking "
    assert whole.response is not None and whole.response.startswith("[sim] You said: q")


async def test_tool_call_prompt_yields_a_tool_calls_chunk(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    messages = [{"role": "user", "content": "call: weather in Paris"}]
    chunks = [
        c
        async for c in await client.chat(
            model="gpt-oss:20b", messages=messages, tools=tools, stream=True
        )
    ]
    assert chunks[0].done is False
    assert chunks[0].message.tool_calls is not None
    call = chunks[0].message.tool_calls[0]
    assert call.function.name == "lookup"
    assert call.function.arguments == {"query": "weather in Paris"}
    assert chunks[-1].done_reason == "stop"


async def test_ollama_python_async_chat_stream_and_whole(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    messages = [{"role": "user", "content": "first"}, {"role": "user", "content": "second"}]
    parts: list[str] = []
    async for c in await client.chat(model="gpt-oss:20b", messages=messages, stream=True):
        assert c.message.content is not None
        parts.append(c.message.content)
    assert "".join(parts) == "[sim] You said: second [sim] You "
    whole = await client.chat(model="gpt-oss:20b", messages=messages)
    assert whole.message.content == "".join(parts)
    assert (whole.done, whole.done_reason, whole.prompt_eval_count) == (True, "stop", 2)
    assert whole.total_duration is not None and whole.load_duration is not None
    assert whole.total_duration >= whole.load_duration > 0


async def test_ollama_python_sync_client_sees_models(sim: OllamaSimulator) -> None:
    # ollama.Client.close() carries no annotations; the context manager closes it the same way.
    with ollama.Client(host=sim.url) as sync:
        listed = await asyncio.to_thread(sync.list)
        assert [m.model for m in listed.models][:2] == ["gpt-oss:20b", "gpt-oss:120b"]
        shown = await asyncio.to_thread(sync.show, "gpt-oss:20b")
        assert shown.modelinfo is not None
        assert shown.modelinfo["gptoss.context_length"] == 131072
        assert shown.modelinfo["general.architecture"] == "gptoss"
        assert shown.capabilities == ["completion", "tools", "thinking"]
        answer = await asyncio.to_thread(sync.generate, model="gpt-oss:20b", prompt="sync")
        assert answer.response is not None and answer.response.startswith("[sim] You said: sync")
        running = await asyncio.to_thread(sync.ps)
        assert [m.model for m in running.models] == ["gpt-oss:20b"]
        assert running.models[0].size_vram == running.models[0].size
        embedded = await asyncio.to_thread(sync.embed, model="embeddinggemma", input=["a", "b"])
        assert [len(v) for v in embedded.embeddings] == [768, 768]
        legacy = await asyncio.to_thread(sync.embeddings, model="embeddinggemma", prompt="a")
        assert len(legacy.embedding) == 768


async def test_show_accepts_the_legacy_name_field(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    status, _, raw = await post(http, sim, "/api/show", {"name": "embeddinggemma"})
    shown = json.loads(raw)
    assert status == 200
    assert "model_info" in shown
    assert shown["capabilities"] == ["embedding"]
    assert list(shown)[-3:] == ["model_info", "capabilities", "modified_at"]


async def test_embeddings_are_deterministic_and_empty_input_gives_empty_list(
    sim: OllamaSimulator, client: ollama.AsyncClient, http: aiohttp.ClientSession
) -> None:
    one = await client.embed(model="embeddinggemma", input="same text")
    two = await client.embed(model="embeddinggemma:latest", input=["same text", "other"])
    assert one.embeddings[0] == two.embeddings[0] != two.embeddings[1]
    assert abs(sum(x * x for x in one.embeddings[0]) - 1.0) < 1e-3
    status, _, raw = await post(http, sim, "/api/embed", {"model": "embeddinggemma", "input": ""})
    assert (status, raw) == (200, b'{"model":"embeddinggemma","embeddings":[]}')
    cut = await client.embed(model="embeddinggemma", input="x", dimensions=8)
    assert len(cut.embeddings[0]) == 8


# -- load, unload, keep_alive ------------------------------------------------------------


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    status, content_type, raw = await post(
        http, sim, "/api/generate", {"model": "gpt-oss:20b", "prompt": ""}
    )
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    loaded = json.loads(raw)
    assert list(loaded) == ["model", "created_at", "response", "done", "done_reason"]
    assert (loaded["response"], loaded["done_reason"]) == ("", "load")
    assert sim.is_loaded("gpt-oss:20b")
    body = {"model": "gpt-oss:20b", "messages": [], "keep_alive": 0}
    unloaded = json.loads((await post(http, sim, "/api/chat", body))[2])
    assert unloaded["message"] == {"role": "assistant", "content": ""}
    assert unloaded["done_reason"] == "unload"
    assert not sim.is_loaded("gpt-oss:20b")


async def test_cold_load_is_paid_once_and_shows_in_load_duration(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    sim.cold_load_delay = 0.2
    cold, warm = await asyncio.gather(
        client.generate(model="gpt-oss:20b", prompt="a"),
        client.generate(model="gpt-oss:20b", prompt="b"),
    )
    assert cold.load_duration is not None and warm.load_duration is not None
    assert cold.load_duration >= 0.19e9
    assert warm.load_duration >= 0.19e9  # waited for the same load
    again = await client.generate(model="gpt-oss:20b", prompt="c", keep_alive=0)
    assert again.load_duration is not None and again.load_duration < 0.1e9
    assert not sim.is_loaded("gpt-oss:20b")
    sim.cold_load_delay = 0.05
    reloaded = await client.generate(model="gpt-oss:20b", prompt="d")
    assert reloaded.load_duration is not None and reloaded.load_duration >= 0.04e9


async def test_ps_lists_loaded_models_by_expiry(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    await client.generate(model="gpt-oss:120b", prompt="", keep_alive="-1m")
    await client.generate(model="gpt-oss:20b", prompt="", keep_alive=60)
    running = await client.ps()
    assert [m.model for m in running.models] == ["gpt-oss:120b", "gpt-oss:20b"]
    expires_at = running.models[0].expires_at
    assert expires_at is not None and expires_at.year > 2200
    await client.generate(model="gpt-oss:20b", prompt="x", keep_alive=0)
    assert [m.model for m in (await client.ps()).models] == ["gpt-oss:120b"]


# -- errors before the first byte --------------------------------------------------------


async def test_errors_before_the_first_byte_have_status_and_ollama_text(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(sim.url + "/api/chat") as response:
        assert response.status == 400
        assert await response.read() == b'{"error":"missing request body"}'
    async with http.post(sim.url + "/api/chat", data=b"{nope") as response:
        assert response.status == 400
        assert "invalid character" in (await response.json())["error"]
    cases = [
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {"model": "nope", "messages": []}, 404, "model 'nope' not found"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/show", {}, 400, "model is required"),
        ("/api/show", {"model": "nope"}, 404, "model 'nope:latest' not found"),
        ("/api/delete", {"model": "nope"}, 404, "model 'nope' not found"),
        ("/api/copy", {"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
        ("/api/chat", {"model": "gpt-oss:20b", "think": "lots"}, 400, "invalid think value"),
    ]
    for path, body, status, message in cases:
        method = "DELETE" if path == "/api/delete" else "POST"
        async with http.request(method, sim.url + path, json=body) as response:
            assert response.status == status, path
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            assert message in (await response.json())["error"]


async def test_embedding_model_refuses_chat_and_generate(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    with pytest.raises(ollama.ResponseError) as chat_error:
        await client.chat(model="embeddinggemma", messages=[{"role": "user", "content": "x"}])
    assert (chat_error.value.status_code, chat_error.value.error) == (
        400,
        '"embeddinggemma" does not support chat',
    )
    with pytest.raises(ollama.ResponseError, match="does not support generate"):
        await client.generate(model="embeddinggemma:latest", prompt="x")


# -- faults ----------------------------------------------------------------------------


async def test_busy_fault_answers_ollama_503_then_recovers(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    sim.faults.busy = 2
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as busy:
            await client.generate(model="gpt-oss:20b", prompt="x")
        assert (busy.value.status_code, busy.value.error) == (503, BUSY)
    assert (await client.generate(model="gpt-oss:20b", prompt="x")).done
    assert sim.faults.busy == 0


async def test_fail_before_fault_answers_500(
    sim: OllamaSimulator, client: ollama.AsyncClient
) -> None:
    sim.faults.fail_before = "boom"
    with pytest.raises(ollama.ResponseError) as failure:
        await client.embed(model="embeddinggemma", input="x")
    assert (failure.value.status_code, failure.value.error) == (500, "boom")


async def test_fail_after_tokens_ends_the_stream_with_an_error_line(
    sim: OllamaSimulator, client: ollama.AsyncClient, http: aiohttp.ClientSession
) -> None:
    sim.faults.fail_after_tokens = 2
    body = {"model": "gpt-oss:20b", "prompt": "x"}
    status, _, raw = await post(http, sim, "/api/generate", body)
    chunks = lines_of(raw)
    assert status == 200
    assert [c.get("done") for c in chunks] == [False, False, None]
    assert list(chunks[-1]) == ["error"]
    seen: list[str] = []
    stream = await client.generate(model="gpt-oss:20b", prompt="x", stream=True)
    with pytest.raises(ollama.ResponseError) as failure:
        await collect(stream, seen)
    assert failure.value.status_code == -1
    assert seen == ["[sim] ", "You "]


async def test_fail_after_zero_tokens_is_a_real_500(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.fail_after_tokens = 0
    status, content_type, _ = await post(
        http, sim, "/api/generate", {"model": "gpt-oss:20b", "prompt": "x"}
    )
    assert (status, content_type) == (500, "application/json")


async def test_drop_after_tokens_truncates_the_chunked_body(
    sim: OllamaSimulator, client: ollama.AsyncClient, http: aiohttp.ClientSession
) -> None:
    sim.faults.drop_after_tokens = 3
    async with http.post(
        sim.url + "/api/chat",
        json={"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "x"}]},
    ) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    stream = await client.generate(model="gpt-oss:20b", prompt="x", stream=True)
    with pytest.raises(httpx.HTTPError):
        await collect(stream, [])
    await sim.wait_until(lambda: sim.stats.dropped == 2 and sim.stats.active == 0)
    assert (sim.stats.cancelled, sim.stats.completed) == (0, 0)


async def test_hang_fault_counts_a_client_timeout_as_cancelled(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.hang = True
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            sim.url + "/api/generate", json={"model": "gpt-oss:20b", "prompt": "x"}, timeout=timeout
        ) as response:
            await response.read()
    await sim.wait_until(lambda: sim.stats.active == 0)
    assert (sim.stats.cancelled, sim.stats.completed) == (1, 0)


async def test_stall_then_disconnect_is_counted_once(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.stall_after_tokens = 2
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(sim.url + "/api/chat", json=body) as response:
        first = await response.content.readline()
        second = await response.content.readline()
        assert json.loads(first)["message"]["content"] == "[sim] "
        assert json.loads(second)["done"] is False
        await sim.wait_until(lambda: sim.stats.active == 1)
        response.close()
    await sim.wait_until(lambda: sim.stats.active == 0)
    assert (sim.stats.cancelled, sim.stats.completed, sim.stats.tokens_sent) == (1, 0, 2)


async def test_client_leaving_a_paced_stream_is_counted_once(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.tokens_per_second = 20
    sim.answer_tokens = 50
    body = {"model": "gpt-oss:20b", "prompt": "slow"}
    async with http.post(sim.url + "/api/generate", json=body) as response:
        await response.content.readline()
        response.close()
    await sim.wait_until(lambda: sim.stats.active == 0)
    assert (sim.stats.cancelled, sim.stats.completed, sim.stats.max_active) == (1, 0, 1)
    assert sim.stats.tokens_sent < 50


async def test_wait_until_raises_timeout_error(sim: OllamaSimulator) -> None:
    with pytest.raises(TimeoutError):
        await sim.wait_until(lambda: sim.stats.completed == 99, timeout=0.05)


# -- model management ------------------------------------------------------------------


async def test_pull_streams_progress_and_adds_the_model(
    sim: OllamaSimulator, client: ollama.AsyncClient, http: aiohttp.ClientSession
) -> None:
    statuses = [p.status async for p in await client.pull("llama3.2", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(s is not None and s.startswith("pulling ") and len(s) == 20 for s in statuses)
    assert "llama3.2:latest" in [m.model for m in (await client.list()).models]
    status, content_type, raw = await post(
        http, sim, "/api/pull", {"model": "qwen3", "stream": False}
    )
    assert (status, content_type, raw) == (200, "application/json", b'{"status":"success"}')


async def test_blobs_create_copy_and_delete(
    sim: OllamaSimulator, client: ollama.AsyncClient, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(200_000))
    digest = await client.create_blob(weights)
    assert digest in sim.blobs
    async with http.head(f"{sim.url}/api/blobs/{digest}") as response:
        assert response.status == 200
    async with http.post(f"{sim.url}/api/blobs/{digest}", data=b"again") as response:
        assert response.status == 200  # already there: not read again
    created = await client.create("mine", files={"model.gguf": digest})
    assert created.status == "success"
    with pytest.raises(ollama.ResponseError) as missing:
        await client.create("other", files={"model.gguf": "sha256:" + "0" * 64})
    assert missing.value.status_code == 400
    progress = [
        p.status async for p in await client.create("derived", from_="gpt-oss:20b", stream=True)
    ]
    assert progress[-2:] == ["writing manifest", "success"]
    assert (await client.copy("mine", "mine-copy")).status == "success"
    names = [m.model for m in (await client.list()).models]
    assert {"mine:latest", "derived:latest", "mine-copy:latest"} <= set(names)
    assert (await client.delete("mine-copy")).status == "success"
    with pytest.raises(ollama.ResponseError) as gone:
        await client.delete("mine-copy")
    assert gone.value.status_code == 404


async def test_blob_with_wrong_digest_is_refused(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    wrong = "sha256:" + "1" * 64
    async with http.post(f"{sim.url}/api/blobs/{wrong}", data=b"content") as response:
        assert response.status == 400
        assert "digest mismatch" in (await response.json())["error"]
    async with http.head(f"{sim.url}/api/blobs/{wrong}") as response:
        assert response.status == 404


# -- OpenAI and Anthropic layers -------------------------------------------------------


async def test_openai_chat_stream_has_role_finish_usage_and_done(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {
        "model": "gpt-oss:20b",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hey"}],
    }
    status, content_type, raw = await post(http, sim, "/v1/chat/completions", body)
    assert (status, content_type) == (200, "text/event-stream")
    frames = sse_data(raw)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert list(chunks[0]) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "[sim] "}
    assert "role" not in chunks[1]["choices"][0]["delta"]
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}
    assert len({c["id"] for c in chunks}) == 1


async def test_openai_chat_whole_and_errors_in_openai_shape(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hey"}]}
    status, content_type, raw = await post(http, sim, "/v1/chat/completions", body)
    completion = json.loads(raw)
    assert (status, content_type) == (200, "application/json")
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "[sim] You said: hey [sim] You ",
    }
    assert completion["usage"]["completion_tokens"] == 6
    status, _, raw = await post(http, sim, "/v1/chat/completions", body | {"model": "nope"})
    assert status == 404
    assert json.loads(raw) == {
        "error": {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    sim.faults.busy = 1
    status, _, raw = await post(http, sim, "/v1/chat/completions", body)
    assert (status, json.loads(raw)["error"]["type"]) == (503, "api_error")


async def test_openai_completions_models_and_embeddings(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-oss:20b", "prompt": "p", "stream": True, "max_tokens": 2}
    frames = sse_data((await post(http, sim, "/v1/completions", body))[2])
    texts = [json.loads(f)["choices"][0]["text"] for f in frames[:-1]]
    assert texts == ["[sim] ", "You ", ""]
    assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "length"
    async with http.get(sim.url + "/v1/models") as response:
        models = await response.json()
    assert models["data"][0] == {
        "id": "gpt-oss:20b",
        "object": "model",
        "created": models["data"][0]["created"],
        "owned_by": "library",
    }
    async with http.get(sim.url + "/v1/models/nope") as response:
        assert response.status == 404
    embed = {"model": "embeddinggemma", "input": ["a", "b"]}
    listed = json.loads((await post(http, sim, "/v1/embeddings", embed))[2])
    assert [d["index"] for d in listed["data"]] == [0, 1]
    assert len(listed["data"][0]["embedding"]) == 768


async def test_responses_and_messages_answer_in_their_shapes(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-oss:20b", "input": "hi", "max_output_tokens": 3}
    response = json.loads((await post(http, sim, "/v1/responses", body))[2])
    assert response["output"][0]["content"][0]["text"] == "[sim] You said: "
    assert response["usage"]["output_tokens"] == 3
    streamed = (await post(http, sim, "/v1/responses", body | {"stream": True}))[2]
    events = [json.loads(f) for f in sse_data(streamed)]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    message = {
        "model": "gpt-oss:20b",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "yo"}],
    }
    whole = json.loads((await post(http, sim, "/v1/messages", message))[2])
    assert (whole["type"], whole["stop_reason"]) == ("message", "end_turn")
    kinds = [
        json.loads(f)["type"]
        for f in sse_data((await post(http, sim, "/v1/messages", message | {"stream": True}))[2])
    ]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    status, _, raw = await post(http, sim, "/v1/messages", message | {"model": "nope"})
    assert (status, json.loads(raw)["type"]) == (404, "error")


async def test_messages_stream_thinking_text_and_tool_use_blocks_as_ollama_does(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    # anthropic.StreamConverter: a block opens with its first piece, a tool call is one
    # whole tool_use block, and the stop reason says tool_use.
    tool = {"name": "weather", "input_schema": {"type": "object"}}
    call = {
        "model": "gpt-oss:20b",
        "max_tokens": 64,
        "stream": True,
        "tools": [tool],
        "messages": [{"role": "user", "content": "call: Seoul"}],
    }
    events = [json.loads(f) for f in sse_data((await post(http, sim, "/v1/messages", call))[2])]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    block = events[1]["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "weather", {})
    assert events[2]["delta"] == {"type": "input_json_delta", "partial_json": '{"query":"Seoul"}'}
    assert events[4]["delta"] == {"stop_reason": "tool_use"}
    whole = json.loads((await post(http, sim, "/v1/messages", call | {"stream": False}))[2])
    assert whole["content"] == [
        {"type": "tool_use", "id": block["id"], "name": "weather", "input": {"query": "Seoul"}}
    ]

    think = {
        "model": "gpt-oss:20b",
        "max_tokens": 64,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 32},
        "messages": [{"role": "user", "content": "yo"}],
    }
    events = [json.loads(f) for f in sse_data((await post(http, sim, "/v1/messages", think))[2])]
    opened = [e for e in events if e["type"] == "content_block_start"]
    starts = [(e["index"], e["content_block"]) for e in opened]
    assert starts == [(0, {"type": "thinking", "thinking": ""}), (1, {"type": "text", "text": ""})]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert stops == [0, 1]
    kinds = {e["delta"]["type"] for e in events if e["type"] == "content_block_delta"}
    assert kinds == {"thinking_delta", "text_delta"}


# -- lifecycle, recording, command line --------------------------------------------------


async def test_requests_are_recorded_as_received(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    await post(http, sim, "/api/show", {"model": "gpt-oss:20b"})
    await sim.wait_until(lambda: len(sim.requests) == 1)
    recorded = sim.requests[0]
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/api/show", "")
    assert recorded.headers["host"] == f"127.0.0.1:{sim.port}"
    assert json.loads(recorded.body) == {"model": "gpt-oss:20b"}


async def test_stop_kills_open_streams_and_the_port_can_be_reused(
    sim: OllamaSimulator, http: aiohttp.ClientSession
) -> None:
    sim.faults.stall_after_tokens = 1
    port = sim.port
    async with http.post(
        sim.url + "/api/generate", json={"model": "gpt-oss:20b", "prompt": "x"}
    ) as response:
        await response.content.readline()
        await sim.stop()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert await sim.start(port=port) == f"http://127.0.0.1:{port}"
    async with http.get(sim.url + "/") as response:
        assert response.status == 200


async def test_custom_models_get_a_latest_tag(http: aiohttp.ClientSession) -> None:
    custom = OllamaSimulator(name="one", models=[SimulatedModel("tiny", thinking=False)])
    async with custom:
        status, _, raw = await post(
            http, custom, "/api/chat", {"model": "tiny", "think": True, "messages": []}
        )
        assert (status, json.loads(raw)) == (400, {"error": '"tiny" does not support thinking'})
        assert list(custom.models) == ["tiny:latest"]


async def test_command_line_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "olbproxy.simulator",
        "--ports",
        str(port),
        "--tps",
        "0",
        "--name-prefix",
        "cli",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert line == f"listening http://127.0.0.1:{port}\n".encode()
        body = {"model": "gpt-oss:20b", "prompt": "cli", "stream": False}
        async with http.post(f"http://127.0.0.1:{port}/api/generate", json=body) as response:
            assert (await response.json())["response"].startswith(f"[cli-{port}] You said: cli")
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
