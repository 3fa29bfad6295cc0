"""The OpenAI Python SDK against the proxy's ``/v1``: chat, streams with usage, tools,
embeddings, the Responses API, models, and its own error classes."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from .scene import BIG, EMBEDDING, SMALL, STATUSES, Clients, refused

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "why is the sky blue"}]
TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ERRORS: dict[int, type[openai.APIStatusError]] = {
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    503: openai.InternalServerError,
}


def client_for(clients: Clients, key: str | None = None) -> AsyncOpenAI:
    # No retries: the SDK would retry a 503 twice, honouring Retry-After, before raising.
    return AsyncOpenAI(base_url=clients.url + "/v1", api_key=key or clients.key, max_retries=0)


async def test_chat_answers_with_usage_and_is_recorded(clients: Clients) -> None:
    async with client_for(clients) as client:
        completion = await client.chat.completions.create(model=SMALL, messages=MESSAGES)
    (choice,) = completion.choices
    assert choice.message.content and "You said: why is the sky blue" in choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 12)

    (record,) = await clients.recorded("kim")
    assert (record.endpoint, record.model, record.status) == ("/v1/chat/completions", SMALL, "done")
    assert record.answer is not None and record.answer["content"] == choice.message.content


async def test_a_stream_comes_in_pieces_and_ends_with_usage(clients: Clients) -> None:
    async with client_for(clients) as client:
        stream = await client.chat.completions.create(
            model=SMALL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == 12 and "".join(pieces).startswith("[sim1] You said: why")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.total_tokens == 17


async def test_the_sync_client_streams_too(clients: Clients) -> None:
    def run() -> list[str]:
        with OpenAI(base_url=clients.url + "/v1", api_key=clients.key) as client:
            stream = client.chat.completions.create(model=BIG, messages=MESSAGES, stream=True)
            return [c.choices[0].delta.content or "" for c in stream if c.choices]

    pieces = await asyncio.to_thread(run)
    assert len([p for p in pieces if p]) == 12 and "".join(pieces).startswith("[sim2]")


async def test_tool_calls_come_back_with_ids_and_json_arguments(clients: Clients) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "call: Seoul"}]
    async with client_for(clients) as client:
        completion = await client.chat.completions.create(
            model=SMALL,
            messages=messages,
            tools=[TOOL],
        )
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "weather" and call.function.arguments == '{"query":"Seoul"}'


async def test_embeddings_come_back_as_vectors(clients: Clients) -> None:
    async with client_for(clients) as client:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        embedded = await client.embeddings.create(model=EMBEDDING, input=["a", "b c"])
        floats = await client.embeddings.create(model=EMBEDDING, input="a", encoding_format="float")
    assert [len(e.embedding) for e in embedded.data] == [768, 768]
    assert embedded.usage.prompt_tokens == 3
    assert floats.data[0].embedding == pytest.approx(embedded.data[0].embedding, abs=1e-6)


async def test_the_responses_api_whole_and_streamed(clients: Clients) -> None:
    async with client_for(clients) as client:
        response = await client.responses.create(model=SMALL, input="why is the sky blue")
        assert response.status == "completed"
        assert response.output_text.startswith("[sim1] You said: why is the sky blue")
        assert response.usage is not None and response.usage.output_tokens == 12
        stream = await client.responses.create(model=SMALL, input="hello there", stream=True)
        events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 12 and "".join(deltas).startswith("[sim1] You said: hello there")
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "".join(deltas)


async def test_models_list_only_what_the_user_may_use(clients: Clients) -> None:
    async with client_for(clients) as client:
        ids = {model.id async for model in client.models.list()}
        one = await client.models.retrieve(SMALL)
    assert ids == {SMALL, BIG, "embeddinggemma:latest"}
    assert one.id == SMALL and one.object == "model"
    async with client_for(clients, clients.limited_key) as client:
        theirs = [model.id async for model in client.models.list()]
    assert theirs == [BIG]


@pytest.mark.parametrize("status", STATUSES)
async def test_refusals_raise_the_sdks_error_classes(clients: Clients, status: int) -> None:
    async with refused(clients, status) as refusal, client_for(clients, refusal.key) as client:
        with pytest.raises(ERRORS[status]) as whole:
            await client.chat.completions.create(model=refusal.model, messages=MESSAGES)
        with pytest.raises(ERRORS[status]) as streamed:
            await client.chat.completions.create(
                model=refusal.model, messages=MESSAGES, stream=True
            )
    for error in (whole.value, streamed.value):
        assert error.status_code == status
        assert isinstance(error.body, dict) and error.body["message"].startswith(refusal.message)
        assert str(error).startswith(f"Error code: {status} - ")
