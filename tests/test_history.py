"""Conversation facts read from one request: history hashes, tasks, titles. Pure."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest

from olbproxy.persistence import history as history_module
from olbproxy.persistence.history import (
    answered,
    context_hash,
    first_user_text,
    history,
    merge_tool_calls,
    new_input,
    task_of,
    title_of,
)

TITLE_PROMPT = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    "### Guidelines:\n- The title should clearly represent the main theme.\n"
    "### Chat History:\n<chat_history>\nUSER: 안녕\nASSISTANT: 안녕하세요\n</chat_history>"
)
TAGS_PROMPT = (
    "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history, "
    "along with 1-3 more specific subtopic tags.\n### Guidelines:\n- Start with high-level domains"
)
FOLLOW_UP_PROMPT = (
    "### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might "
    "naturally ask next in this conversation as a **user**"
)


def test_a_continuation_prefix_equals_the_previous_turns_full_hash() -> None:
    first = [{"role": "user", "content": "hello"}]
    turn1 = history(first)
    assert turn1.prefix is None and turn1.candidates == ()
    full1 = answered(turn1, "Hi! How can I help?", [])
    second = [*first, {"role": "assistant", "content": "Hi! How can I help?"}]
    turn2 = history([*second, {"role": "user", "content": "tell me more"}])
    assert turn2.prefix == full1
    assert turn2.candidates == (full1,)


def test_what_clients_change_on_the_way_back_does_not_break_the_thread() -> None:
    # Answer as recorded: trailing space (the model's), thinking, a native tool call.
    call = {"function": {"name": "search", "arguments": {"q": "서울", "n": 3}}}
    full = answered(history([{"role": "user", "content": "Café?"}]), "It is open ", [call])
    nfd = unicodedata.normalize("NFD", "Café?")
    sent_back = [
        {"role": "system", "content": "Today is Monday"},  # front-ends rewrite these
        {"role": "user", "content": nfd},
        {
            "role": "assistant",
            "content": "It is open",
            "thinking": "dropped by Open WebUI",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": json.dumps({"n": 3, "q": "서울"})},
                }
            ],
        },
        {"role": "tool", "content": "open until 6", "tool_name": "search"},
    ]
    assert history(sent_back).prefix == full


def test_a_different_history_is_a_different_conversation() -> None:
    full = answered(history([{"role": "user", "content": "a"}]), "b", [])
    other = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]
    assert history([*other, {"role": "user", "content": "d"}]).prefix != full


def test_candidates_are_the_answered_prefixes_longest_first() -> None:
    messages = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3"},
        {"role": "assistant", "content": "4"},
        {"role": "tool", "content": "5"},
        {"role": "user", "content": "6"},
    ]
    got = history(messages)
    assert got.candidates == (history(messages[:4]).head, history(messages[:2]).head)
    assert got.prefix == history(messages[:5]).head


def test_generate_continues_on_its_context() -> None:
    assert context_hash([1, 2, 3]) == context_hash([1, 2, 3]) != context_hash([1, 2])
    assert context_hash(None) is None and context_hash([]) is None


@pytest.mark.parametrize(
    ("prompt", "task"),
    [(TITLE_PROMPT, "title"), (TAGS_PROMPT, "tags"), (FOLLOW_UP_PROMPT, "follow_up")],
)
def test_open_webui_background_tasks_are_recognised(prompt: str, task: str) -> None:
    body = {"messages": [{"role": "user", "content": prompt}]}
    assert task_of("/api/chat", body, stream=False) == task
    assert task_of("/v1/chat/completions", body, stream=False) == task
    # Streamed, it is somebody's real question; on /api/generate, not Open WebUI's.
    assert task_of("/api/chat", body, stream=True) is None
    assert task_of("/api/generate", {"prompt": prompt}, stream=False) is None


def test_an_ordinary_message_is_no_task() -> None:
    body = {"messages": [{"role": "user", "content": "What is ### Task: about?"}]}
    assert task_of("/api/chat", body, stream=False) is None
    odd = {"messages": [{"role": "user", "content": "### Task:\nSomething new"}]}
    assert task_of("/api/chat", odd, stream=False) == "other"


def test_titles_are_one_short_line() -> None:
    assert title_of("  hello\n  world ") == "hello world"
    long = "서울에서 부산까지 가장 빠르게 가는 방법을 알려주세요 " * 4
    title = title_of(long)
    assert len(title) <= 60 and title.endswith("…")
    assert long.startswith(title[:-1])
    assert first_user_text(
        "/api/chat",
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "second"},
            ]
        },
    ) == ("first")


def test_the_new_input_per_endpoint() -> None:
    assert new_input("/api/generate", {"prompt": "why"}) == ("user", "why")
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    body = {"messages": [{"role": "user", "content": parts}]}
    assert new_input("/v1/chat/completions", body) == ("user", "look")
    tool = {"messages": [{"role": "tool", "content": "42"}]}
    assert new_input("/api/chat", tool) == ("tool", "42")


def test_fragmented_openai_tool_calls_are_put_back_together() -> None:
    deltas = [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"q":'}},
        {"index": 0, "function": {"arguments": '"x"}'}},
        {
            "index": 1,
            "id": "call_b",
            "type": "function",
            "function": {"name": "g", "arguments": "{}"},
        },
    ]
    merged = merge_tool_calls(deltas)
    assert [(c["id"], c["function"]["arguments"]) for c in merged] == [
        ("call_a", '{"q":"x"}'),
        ("call_b", "{}"),
    ]
    native = [{"function": {"name": "f", "arguments": {"q": "x"}}}]
    assert merge_tool_calls(native) == native


def test_a_long_history_is_hashed_from_a_bounded_window(monkeypatch: pytest.MonkeyPatch) -> None:
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(100_001)
    ]
    calls = 0
    real = history_module.canonical

    def counting(message: Any) -> str:
        nonlocal calls
        calls += 1
        return real(message)

    monkeypatch.setattr(history_module, "canonical", counting)
    turn = history(turns)
    # A chat of 100,000 messages costs what one of a few hundred does.
    assert calls == history_module.WINDOW + history_module.SPAN
    full = answered(turn, "an answer", [])
    following = history(
        [*turns, {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "more"}]
    )
    assert following.prefix == full and following.candidates[0] == full


def test_histories_that_differ_only_before_the_window_share_their_hashes() -> None:
    tail = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(400)]
    one = history([{"role": "user", "content": "A"}, *tail])
    other = history([{"role": "user", "content": "B"}, *tail])
    short = history(tail[-10:])
    assert one.head == other.head and one.head != short.head
