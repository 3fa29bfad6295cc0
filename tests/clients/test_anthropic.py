"""The Anthropic Python SDK against the proxy's ``/v1/messages`` (Ollama's Anthropic layer):
answers, streaming events, tool use, thinking, and its own error classes.

SDK 2.x sends ``api_key=`` as ``Authorization: Bearer``, like ``auth_token=``; the
``X-Api-Key`` header is what SDK 1.x and Claude Code with ``ANTHROPIC_API_KEY`` send.
"""

from __future__ import annotations

import asyncio

import anthropic
import pytest
from anthropic import Anthropic, AsyncAnthropic
from anthropic.types import MessageParam, ToolParam

from .scene import BIG, SMALL, STATUSES, Clients, refused

MESSAGES: list[MessageParam] = [{"role": "user", "content": "why is the sky blue"}]
TOOL: ToolParam = {
    "name": "weather",
    "description": "Today's weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
ERRORS: dict[int, tuple[type[anthropic.APIStatusError], str]] = {
    401: (anthropic.AuthenticationError, "authentication_error"),
    403: (anthropic.PermissionDeniedError, "permission_error"),
    404: (anthropic.NotFoundError, "not_found_error"),
    503: (anthropic.ServiceUnavailableError, "overloaded_error"),
}


def client_for(clients: Clients, key: str | None = None) -> AsyncAnthropic:
    # No retries: the SDK retries 5xx twice before it raises.
    return AsyncAnthropic(base_url=clients.url, auth_token=key or clients.key, max_retries=0)


async def test_a_message_answers_with_usage(clients: Clients) -> None:
    async with client_for(clients) as client:
        message = await client.messages.create(model=SMALL, max_tokens=100, messages=MESSAGES)
    (block,) = message.content
    assert block.type == "text" and block.text.startswith("[sim1] You said: why is the sky blue")
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 12)
    assert clients.requests_to("/v1/messages") == 1


async def test_a_stream_brings_its_events_and_text_in_pieces(clients: Clients) -> None:
    async with (
        client_for(clients) as client,
        client.messages.stream(model=SMALL, max_tokens=100, messages=MESSAGES) as stream,
    ):
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    block = final.content[0]
    assert block.type == "text"
    assert len(pieces) == 12 and "".join(pieces) == block.text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 12

    async with client_for(clients) as client:
        events = await client.messages.create(
            model=SMALL,
            max_tokens=100,
            messages=MESSAGES,
            stream=True,
        )
        kinds = [event.type async for event in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 12,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_tool_use_whole_and_streamed(clients: Clients) -> None:
    messages: list[MessageParam] = [{"role": "user", "content": "call: Seoul"}]
    async with client_for(clients) as client:
        message = await client.messages.create(
            model=SMALL,
            max_tokens=100,
            messages=messages,
            tools=[TOOL],
        )
        async with client.messages.stream(
            model=SMALL,
            max_tokens=100,
            messages=messages,
            tools=[TOOL],
        ) as stream:
            streamed = await stream.get_final_message()
    for answer in (message, streamed):
        assert answer.stop_reason == "tool_use"
        (use,) = answer.content
        assert use.type == "tool_use" and use.id.startswith("call_")
        assert (use.name, use.input) == ("weather", {"query": "Seoul"})


async def test_thinking_comes_in_its_own_block(clients: Clients) -> None:
    async with (
        client_for(clients) as client,
        client.messages.stream(
            model=BIG,
            max_tokens=2048,
            messages=MESSAGES,
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream,
    ):
        final = await stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking" and thinking.thinking.startswith("[sim2] is thinking")
    assert text.type == "text" and text.text.startswith("[sim2] You said:")


async def test_the_sync_client_and_api_key_work_too(clients: Clients) -> None:
    def run() -> str:
        # SDK 2.x: api_key= goes out as Authorization: Bearer.
        with Anthropic(base_url=clients.url, api_key=clients.key) as client:
            message = client.messages.create(model=SMALL, max_tokens=100, messages=MESSAGES)
        block = message.content[0]
        assert block.type == "text"
        return block.text

    assert (await asyncio.to_thread(run)).startswith("[sim1] You said:")


async def test_the_key_in_x_api_key(clients: Clients) -> None:
    # As SDK 1.x and Claude Code with ANTHROPIC_API_KEY send it.
    async with AsyncAnthropic(
        base_url=clients.url, default_headers={"X-Api-Key": clients.key}, max_retries=0
    ) as client:
        message = await client.messages.create(model=SMALL, max_tokens=100, messages=MESSAGES)
    block = message.content[0]
    assert block.type == "text" and block.text.startswith("[sim1] You said:")


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_raise_the_sdks_error_classes(clients: Clients, status: int) -> None:
    error_class, kind = ERRORS[status]
    async with refused(clients, status) as refusal, client_for(clients, refusal.key) as client:
        with pytest.raises(error_class) as whole:
            await client.messages.create(
                model=refusal.model,
                max_tokens=100,
                messages=MESSAGES,
            )
        with pytest.raises(error_class) as streamed:
            async with client.messages.stream(
                model=refusal.model,
                max_tokens=100,
                messages=MESSAGES,
            ) as stream:
                await stream.get_final_message()
    for error in (whole.value, streamed.value):
        assert (error.status_code, error.type) == (status, kind)
        assert error.api_message is not None and error.api_message.startswith(refusal.message)
        assert str(error).startswith(f"{status} {refusal.message}")
