"""LangChain's Ollama integration (``langchain-ollama``) against the proxy: ChatOllama's
invoke, stream and tool calling, OllamaEmbeddings, with the key in the URL as the README
shows (LangChain turns ``http://user:key@host`` into HTTP Basic)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import ollama
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings

from .scene import EMBEDDING, SMALL, STATUSES, Clients, refused

Closing = Callable[[Any], Any]


def url_with(clients: Clients, key: str | None = None) -> str:
    return clients.url.replace("http://", f"http://kim:{key or clients.key}@")


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return "sunny"


async def test_invoke_answers_with_usage_and_is_recorded(
    clients: Clients, closing: Closing
) -> None:
    chat = closing(ChatOllama(model=SMALL, base_url=url_with(clients)))
    answer = await asyncio.to_thread(chat.invoke, "why is the sky blue")
    assert isinstance(answer, AIMessage)
    assert isinstance(answer.content, str) and answer.content.startswith("[sim1] You said: why")
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == 5
    assert answer.usage_metadata["output_tokens"] == 12
    assert answer.response_metadata["done_reason"] == "stop"

    (record,) = await clients.recorded("kim")
    assert (record.endpoint, record.user_name, record.status) == ("/api/chat", "kim", "done")


async def test_stream_comes_in_pieces(clients: Clients, closing: Closing) -> None:
    chat = closing(ChatOllama(model=SMALL, base_url=url_with(clients)))
    chunks = await asyncio.to_thread(lambda: list(chat.stream("why is the sky blue")))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) == 12 and "".join(map(str, texts)).startswith("[sim1] You said: why")
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert isinstance(total, AIMessageChunk) and total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] == 12


async def test_async_invoke_and_stream(clients: Clients, closing: Closing) -> None:
    chat = closing(ChatOllama(model=SMALL, base_url=url_with(clients)))
    answer = await chat.ainvoke("hello")
    assert str(answer.content).startswith("[sim1] You said: hello")
    pieces = [chunk.content async for chunk in chat.astream("hello")]
    assert len([p for p in pieces if p]) == 12


async def test_bind_tools_gets_tool_calls(clients: Clients, closing: Closing) -> None:
    chat = closing(ChatOllama(model=SMALL, base_url=url_with(clients))).bind_tools([weather])
    answer = await chat.ainvoke("call: Seoul")
    assert isinstance(answer, AIMessage)
    (call,) = answer.tool_calls
    assert (call["name"], call["args"]) == ("weather", {"query": "Seoul"})
    assert call["id"]


async def test_embeddings_for_documents_and_a_query(clients: Clients, closing: Closing) -> None:
    embeddings = closing(OllamaEmbeddings(model=EMBEDDING, base_url=url_with(clients)))
    documents = await asyncio.to_thread(embeddings.embed_documents, ["a", "b"])
    query = await embeddings.aembed_query("a")
    assert [len(v) for v in documents] == [768, 768]
    assert query == pytest.approx(documents[0])


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_surface_as_ollama_response_errors(
    clients: Clients, closing: Closing, status: int
) -> None:
    async with refused(clients, status) as refusal:
        chat = closing(ChatOllama(model=refusal.model, base_url=url_with(clients, refusal.key)))
        with pytest.raises(ollama.ResponseError) as info:
            await chat.ainvoke("hello")
    assert info.value.status_code == status
    assert info.value.error.startswith(refusal.message)
