"""The real `ollama` package for JavaScript (npm, pinned in js/package-lock.json), run by
Node.js against the proxy: each test runs a small script from js/ and reads the one JSON
line it prints.

Needs ``node`` and ``npm ci`` in tests/clients/js (``make test`` runs it). Without them the
tests skip, unless OLBPROXY_REQUIRE_NODE=1 (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from .scene import BIG, EMBEDDING, SMALL, STATUSES, Clients, refused

JS = Path(__file__).resolve().parent / "js"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        missing = "node is not installed (Node.js 20 or newer)"
    elif not (JS / "node_modules" / "ollama" / "package.json").is_file():
        missing = f"the npm modules are not installed: run `npm ci` in {JS}"
    else:
        return path
    if os.environ.get("OLBPROXY_REQUIRE_NODE") == "1":
        pytest.fail(missing + " and OLBPROXY_REQUIRE_NODE=1")
    pytest.skip(missing + "; set OLBPROXY_REQUIRE_NODE=1 to fail instead")


async def run(script: str, clients: Clients, key: str, model: str) -> dict[str, Any]:
    environment = {**os.environ, "OLB_HOST": clients.url, "OLB_KEY": key, "OLB_MODEL": model}
    process = await asyncio.create_subprocess_exec(
        node(),
        str(JS / script),
        cwd=JS,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_chat_stream_tools_embed_and_list(clients: Clients) -> None:
    seen = await run("chat.mjs", clients, clients.key, SMALL)
    assert seen["content"].startswith("[sim1] You said: why is the sky blue")
    assert (seen["prompt_eval_count"], seen["eval_count"]) == (5, 12)
    assert len([p for p in seen["pieces"] if p]) == 12
    assert "".join(seen["pieces"]) == seen["content"]
    assert seen["last_done"] is True and seen["last_eval_count"] == 12
    (call,) = seen["tool_calls"]
    assert call["function"] == {"index": 0, "name": "weather", "arguments": {"query": "Seoul"}}
    assert seen["dimensions"] == [768, 768]
    assert seen["models"] == sorted([SMALL, BIG, f"{EMBEDDING}:latest"])

    records = await clients.recorded("kim", lambda m: len(m) == 3)
    assert {(m.endpoint, m.user_name) for m in records} == {("/api/chat", "kim")}


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_throw_response_error_with_status(clients: Clients, status: int) -> None:
    async with refused(clients, status) as refusal:
        seen = await run("refused.mjs", clients, refusal.key, refusal.model)
    whole, streamed = seen["errors"]
    for error in (whole, streamed):
        assert (error["name"], error["status_code"]) == ("ResponseError", status)
        assert error["message"].startswith(refusal.message)


async def test_abort_mid_stream_cancels_the_answer_upstream(clients: Clients) -> None:
    small = clients.small
    small.tokens_per_second = 20  # an answer long enough to be cut: 200 tokens, 10 s
    small.answer_tokens = 200
    seen = await run("abort.mjs", clients, clients.key, SMALL)
    assert len(seen["pieces"]) == 2
    assert seen["error"]["name"] == "AbortError"
    # The proxy closed its upstream connection: the simulator saw its client go.
    await small.wait_until(lambda: small.stats.cancelled == 1)
    assert small.stats.completed == 0 and small.stats.tokens_sent < 200
    records = await clients.recorded("kim")
    assert [m.status for m in records] == ["cancelled"]
