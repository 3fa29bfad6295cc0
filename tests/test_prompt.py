"""Prompts cut at message boundaries: what two requests share, and what it costs to know."""

from __future__ import annotations

import json
import time
from typing import Any

from olbproxy.prompt import prompt_of

M = "gpt-oss:20b"
SYSTEM = {"role": "system", "content": "You are helpful."}
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": M, "messages": list(messages), **extra}


def test_a_follow_up_continues_from_the_whole_prompt_of_the_turn_before() -> None:
    first = prompt_of("/api/chat", M, chat(SYSTEM, {"role": "user", "content": "hi"}))
    follow = prompt_of(
        "/api/chat",
        M,
        chat(
            SYSTEM,
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello", "thinking": "the user greets me"},
            {"role": "user", "content": "more"},
        ),
    )
    assert first is not None and follow is not None
    assert first.continues is None  # a first turn continues nothing
    assert follow.continued == first.key
    assert follow.hashes[: len(first.hashes)] == first.hashes
    assert follow.size > first.size


def test_the_clients_json_spelling_does_not_matter_its_values_do() -> None:
    call = {"function": {"name": "search", "arguments": {"q": "x", "n": 1}}, "id": "call_1"}
    ours = chat({"role": "assistant", "content": "", "tool_calls": [call]}, tools=TOOLS)
    theirs = json.loads(json.dumps(ours, indent=2, sort_keys=True))
    theirs["messages"][0]["tool_calls"][0]["id"] = "call_99"  # clients renumber ids
    theirs["messages"][0]["tool_calls"][0]["function"]["arguments"] = {"n": 1, "q": "x"}
    a, b = prompt_of("/api/chat", M, ours), prompt_of("/api/chat", M, theirs)
    assert a is not None and b is not None and a.key == b.key
    other = prompt_of("/api/chat", M, chat({"role": "user", "content": "x "}, tools=TOOLS))
    assert other is not None and other.key != a.key


def test_what_shapes_the_prefix_comes_first_model_runner_options_system_and_tools() -> None:
    user = {"role": "user", "content": "same"}
    base = prompt_of("/api/chat", M, chat(SYSTEM, user, tools=TOOLS))
    assert base is not None
    runners = (
        prompt_of("/api/chat", "gpt-oss:120b", chat(SYSTEM, user, tools=TOOLS)),
        prompt_of("/api/chat", M, chat(SYSTEM, user, tools=TOOLS, options={"num_ctx": 8192})),
        prompt_of("/api/chat", M, chat(SYSTEM, user, tools=TOOLS, think="high")),
    )
    assert all(p is not None and p.hashes[0] != base.hashes[0] for p in runners)
    system = prompt_of(
        "/api/chat", M, chat({"role": "system", "content": "No."}, user, tools=TOOLS)
    )
    assert system is not None and system.hashes[0] == base.hashes[0]
    assert system.hashes[1] != base.hashes[1]
    # A sampling option does not change the prompt; two users with the same system
    # prompt and tools share those boundaries whatever they ask next.
    same = prompt_of("/api/chat", M, chat(SYSTEM, user, tools=TOOLS, options={"seed": 1}))
    other = prompt_of("/api/chat", M, chat(SYSTEM, {"role": "user", "content": "?"}, tools=TOOLS))
    assert same is not None and same.key == base.key
    assert other is not None and other.hashes[:3] == base.hashes[:3] and other.key != base.key


def test_absent_system_prompt_and_tools_make_no_boundary_of_their_own() -> None:
    first = {"role": "user", "content": "hi"}
    plain = prompt_of("/api/chat", M, chat(first))
    assert plain is not None and len(plain.hashes) == 2  # the runner, the message
    tools = prompt_of("/api/chat", M, chat(first, tools=TOOLS))
    system = prompt_of("/api/chat", M, chat(SYSTEM, first))
    assert tools is not None and len(tools.hashes) == 3
    assert system is not None and len(system.hashes) == 3
    # None of them is the other's prefix: what is absent still counts in the next boundary.
    assert len({plain.key, tools.key, system.key}) == 3
    assert len({plain.hashes[1], tools.hashes[1], system.hashes[1]}) == 3
    empty = prompt_of("/api/chat", M, {"model": M, "messages": []})
    assert empty is not None and len(empty.hashes) == 2 and empty.key != plain.hashes[0]


def test_generate_and_openai_requests_have_prompts_and_embeddings_none() -> None:
    generate = prompt_of("/api/generate", M, {"model": M, "prompt": "why", "system": "S"})
    openai = prompt_of(
        "/v1/chat/completions", M, {"model": M, "messages": [{"role": "user", "content": "x"}]}
    )
    assert generate is not None and openai is not None
    assert prompt_of("/api/embed", M, {"model": M, "input": "x"}) is None
    limited = prompt_of("/api/chat", M, chat({"role": "user", "content": "x"}, max_tokens=42))
    assert limited is not None and limited.answer_tokens == 42


def test_a_four_mib_conversation_is_hashed_in_a_few_milliseconds() -> None:
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "lorem ipsum dolor " * 235}
        for i in range(1000)
    ]
    body = chat(SYSTEM, *turns, tools=TOOLS * 36)
    assert len(json.dumps(body)) > 4 * 1024 * 1024
    began = time.perf_counter()
    prompt = prompt_of("/api/chat", M, body)
    spent = time.perf_counter() - began
    assert prompt is not None and len(prompt.hashes) == 1003
    # The gatekeeper's rule is 50 ms for the whole of a 4 MiB request's handling.
    assert spent < 0.025, spent
