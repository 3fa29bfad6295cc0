"""LlamaIndex's ``Ollama`` LLM (``llama-index-llms-ollama``) against the proxy. It asks
``/api/show`` for the context window first, then sends it as ``num_ctx`` with every chat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import ollama
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool, ToolSelection
from llama_index.llms.ollama import Ollama

from olbproxy.health import USER_AGENT

from .scene import BIG, SMALL, STATUSES, Clients, refused

Closing = Callable[[Any], Any]
QUESTION = [ChatMessage(role="user", content="why is the sky blue")]


def llm_for(clients: Clients, closing: Closing, model: str = SMALL, key: str = "") -> Ollama:
    headers = {"Authorization": f"Bearer {key or clients.key}"}
    llm: Ollama = closing(Ollama(model=model, base_url=clients.url, headers=headers))
    return llm


def weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny"


async def test_chat_asks_show_first_then_answers_with_usage(
    clients: Clients, closing: Closing
) -> None:
    llm = llm_for(clients, closing)
    answer = await asyncio.to_thread(llm.chat, QUESTION)
    assert str(answer.message.content).startswith("[sim1] You said: why is the sky blue")
    assert answer.raw is not None
    assert answer.raw["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}

    # Apart from the health checker's probes (its own User-Agent).
    seen = [r for r in clients.small.requests if r.headers.get("User-Agent") != USER_AGENT]
    assert [r.path for r in seen] == ["/api/show", "/api/chat"]
    assert llm.metadata.context_window == 131072  # from /api/show's model_info
    sent = json.loads(seen[1].body)
    assert sent["options"]["num_ctx"] == 131072

    (record,) = await clients.recorded("kim")
    assert (record.endpoint, record.model, record.user_name) == ("/api/chat", SMALL, "kim")


async def test_stream_chat_and_complete(clients: Clients, closing: Closing) -> None:
    llm = llm_for(clients, closing, BIG)

    def run() -> tuple[list[str], str]:
        deltas = [part.delta or "" for part in llm.stream_chat(QUESTION)]
        return deltas, llm.complete("hello").text

    deltas, completed = await asyncio.to_thread(run)
    assert len([d for d in deltas if d]) == 12
    assert "".join(deltas).startswith("[sim2] You said: why")
    assert completed.startswith("[sim2] You said: hello")


async def test_async_chat_and_stream(clients: Clients, closing: Closing) -> None:
    llm = llm_for(clients, closing)
    # The async methods still ask /api/show with the *sync* client: a blocking call on
    # the event loop, where this test's proxy runs. Let it happen in a thread first.
    await asyncio.to_thread(lambda: llm.metadata)
    answer = await llm.achat(QUESTION)
    assert str(answer.message.content).startswith("[sim1] You said:")
    deltas = [part.delta async for part in await llm.astream_chat(QUESTION) if part.delta]
    assert len(deltas) == 12


async def test_tool_calls_come_back_as_tool_selections(clients: Clients, closing: Closing) -> None:
    llm = llm_for(clients, closing)
    tool = FunctionTool.from_defaults(fn=weather)

    def run() -> list[ToolSelection]:
        response = llm.chat_with_tools([tool], user_msg="call: Seoul")
        calls: list[ToolSelection] = llm.get_tool_calls_from_response(response)
        return calls

    (selection,) = await asyncio.to_thread(run)
    assert (selection.tool_name, selection.tool_kwargs) == ("weather", {"query": "Seoul"})


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_surface_as_ollama_response_errors(
    clients: Clients, closing: Closing, status: int
) -> None:
    async with refused(clients, status) as refusal:
        llm = llm_for(clients, closing, refusal.model, refusal.key)
        with pytest.raises(ollama.ResponseError) as info:
            await asyncio.to_thread(llm.chat, QUESTION)
    assert info.value.status_code == status
    assert info.value.error.startswith(refusal.message)
