"""Records built from finished exchanges (the writer's side of the stream). Pure."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from olbproxy.exchange import Exchange, final_counters, new_id
from olbproxy.persistence.history import answered, history
from olbproxy.persistence.record import Record, record_of

MESSAGES = [{"role": "user", "content": "hello"}]


def ndjson(*objects: dict[str, Any]) -> list[bytes]:
    return [json.dumps(o).encode() + b"\n" for o in objects]


def chat_exchange(chunks: list[bytes], **kw: Any) -> Exchange:
    exchange = Exchange(
        endpoint="/api/chat",
        model="gpt-oss:20b",
        group="20b",
        user="u1",
        user_name="kim",
        stream=True,
        body={"model": "gpt-oss:20b", "messages": MESSAGES},
        **kw,
    )
    exchange.chunks = chunks
    exchange.first_byte = exchange.t0 + 0.012
    exchange.ended = exchange.t0 + 0.5
    exchange.status = 200
    exchange.outcome = "done"
    return exchange


STREAM = ndjson(
    {"message": {"role": "assistant", "content": "", "thinking": "hmm "}, "done": False},
    {"message": {"role": "assistant", "content": "Hi "}, "done": False},
    {"message": {"role": "assistant", "content": "there"}, "done": False},
    {
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 5,
        "eval_count": 2,
        "eval_duration": 1000,
    },
)


def test_a_streamed_turn_becomes_a_record_with_its_answer_and_counters() -> None:
    record = record_of(chat_exchange(STREAM), store_content=True)
    assert (record.kind, record.status, record.input, record.title) == (
        "turn",
        "done",
        "hello",
        "hello",
    )
    assert record.answer == {"content": "Hi there", "thinking": "hmm ", "tool_calls": []}
    assert record.counters == {"prompt_eval_count": 5, "eval_count": 2, "eval_duration": 1000}
    assert record.done_reason == "stop"
    assert record.ttft_ms == 12.0 and record.duration_ms == 500.0
    assert record.ended_at - record.started_at == 500
    assert record.full_hash == answered(history(MESSAGES), "Hi there", [])
    assert record.opens_room and record.prefix_hash is None and record.continues == []


def test_records_survive_the_spool_line_round_trip() -> None:
    record = record_of(chat_exchange(STREAM), store_content=True)
    assert Record.from_line(record.line()) == record


def test_without_content_only_metadata_counters_and_hashes_are_kept() -> None:
    record = record_of(chat_exchange(STREAM), store_content=False)
    assert record.input is None and record.answer is None
    assert "hello" not in record.title and record.title.startswith("gpt-oss:20b · ")
    assert record.full_hash and record.counters["eval_count"] == 2
    assert b"hello" not in record.line() and b"Hi there" not in record.line()


def test_a_cancelled_stream_keeps_its_partial_answer() -> None:
    exchange = chat_exchange(STREAM[:2])
    exchange.outcome = "cancelled"
    record = record_of(exchange, store_content=True)
    assert record.status == "cancelled"
    assert record.answer is not None and record.answer["content"] == "Hi "


def test_an_error_line_in_the_stream_makes_an_error_record() -> None:
    exchange = chat_exchange([*STREAM[:2], *ndjson({"error": "model runner stopped"})])
    record = record_of(exchange, store_content=True)
    assert (record.status, record.error) == ("error", "model runner stopped")


def test_a_failure_before_any_answer_opens_no_room() -> None:
    exchange = chat_exchange([])
    exchange.outcome, exchange.status, exchange.error = "error", 503, "no backend"
    exchange.first_byte = None
    record = record_of(exchange, store_content=True)
    assert (record.status, record.error, record.opens_room) == ("error", "no backend", False)
    assert record.ttft_ms is None and record.full_hash is None


def test_openai_sse_stream_is_assembled_with_its_tool_call() -> None:
    frames = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city":'},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Seoul"}'}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}},
    ]
    chunks = [b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames] + [b"data: [DONE]\n\n"]
    exchange = chat_exchange(chunks)
    exchange.endpoint, exchange.sse = "/v1/chat/completions", True
    record = record_of(exchange, store_content=True)
    assert record.answer is not None
    (call,) = record.answer["tool_calls"]
    assert call["function"] == {"name": "weather", "arguments": '{"city":"Seoul"}'}
    assert record.done_reason == "tool_calls"
    assert record.counters == {"prompt_eval_count": 7, "eval_count": 3}
    assert record.opens_room


def test_open_webui_title_request_is_a_task() -> None:
    prompt = "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat"
    exchange = chat_exchange(
        ndjson({"message": {"role": "assistant", "content": "👋 Greeting"}, "done": True})
    )
    exchange.stream = False
    exchange.body = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": prompt}]}
    record = record_of(exchange, store_content=True)
    assert (record.kind, record.task, record.opens_room) == ("task", "title", False)


def test_generate_records_its_prompt_and_context_thread() -> None:
    exchange = Exchange(
        endpoint="/api/generate",
        model="gpt-oss:20b",
        user="u1",
        body={"model": "gpt-oss:20b", "prompt": "why", "context": [1, 2]},
        started_at=time.time(),
    )
    exchange.chunks = ndjson({"response": "because", "done": True, "context": [1, 2, 3]})
    exchange.outcome, exchange.status = "done", 200
    record = record_of(exchange, store_content=True)
    assert (record.kind, record.input, record.opens_room) == ("generate", "why", True)
    assert record.answer is not None and record.answer["content"] == "because"
    assert record.prefix_hash and record.continues == [record.prefix_hash]
    assert record.full_hash and record.full_hash != record.prefix_hash
    exchange.body = {"model": "gpt-oss:20b", "prompt": "def f(", "suffix": "):", "raw": True}
    assert not record_of(exchange, store_content=True).opens_room  # editor autocompletion


def test_huge_texts_are_cut_to_fit_a_document() -> None:
    exchange = chat_exchange(STREAM)
    exchange.body = {"messages": [{"role": "user", "content": "가" * 2_000_000}]}
    record = record_of(exchange, store_content=True)
    assert record.truncated == ["input"]
    assert record.input is not None and len(record.input.encode()) <= 4 * 1024 * 1024


def test_exchange_ids_are_unique_and_a_forked_child_never_repeats_its_parents() -> None:
    # Ids take their random part from bytes read from the OS in batches; a child forked
    # with a batch half used must not hand out the ids its parent hands out next.
    first = [new_id() for _ in range(1000)]
    assert len(set(first)) == 1000 and all(len(i) == 32 for i in first)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        os.write(write, "".join(new_id()[12:] for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    theirs = os.read(read, 4096).decode()
    os.close(read)
    assert status == 0 and len(theirs) == 100
    mine = [new_id()[12:] for _ in range(5)]
    assert not {theirs[i : i + 20] for i in range(0, 100, 20)} & set(mine)


def test_the_counters_of_a_whole_answer_in_one_piece_are_its_own() -> None:
    # A non-streamed answer through the lane is one chunk: read as its own last line.
    final = {"model": "m", "done": True, "done_reason": "stop", "eval_count": 7}
    final |= {"prompt_eval_count": 3, "total_duration": 9, "message": {"content": "a\nb"}}
    for body in (
        json.dumps(final).encode(),
        json.dumps(final).encode() + b"\n",
        b"\n" + json.dumps(final).encode(),
    ):
        exchange = Exchange(endpoint="/api/chat", chunks=[body])
        assert final_counters(exchange) == {
            "eval_count": 7, "prompt_eval_count": 3, "total_duration": 9, "done_reason": "stop"
        }  # fmt: skip
    assert final_counters(Exchange(endpoint="/api/chat", chunks=[b" \n"])) == {}
    assert final_counters(Exchange(endpoint="/api/chat", chunks=[b'{"error":"x"}'])) == {}
