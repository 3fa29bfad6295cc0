"""The simulator's ``/v1/responses``: OpenAI's Responses API as Ollama's layer speaks it.

Minimal but faithful in shape (``openai/responses.go``): one ``message`` output item with one
``output_text`` part; no reasoning or function-call items. Streamed, every frame is
``event: <type>`` + ``data: <json>`` and the payloads are Go maps, so their keys are sorted
and each carries a ``sequence_number``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator import playback as simulator_playback
from olbproxy.simulator.answer import Reply, Timings, compose, words
from olbproxy.simulator.native import message_words, said_in
from olbproxy.simulator.openai import (
    chat_model,
    encoded,
    flat_messages,
    max_tokens_option,
    openai_error,
    read_body,
)
from olbproxy.simulator.wire import JSON, SSE, go_json, text

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator

Handler = Callable[[web.Request], Any]


class ResponsesEncoder:
    """Responses API: ``event:`` + ``data:`` frames with a sequence number, or one object."""

    content_type = SSE

    def __init__(self, model: str, answer: Reply, body: dict[str, Any]) -> None:
        self.model = model
        self.answer = answer
        self.body = body
        self.id = f"resp_{random.randrange(999999)}"
        self.item_id = f"msg_{random.randrange(999999)}"
        self.created = int(time.time())
        self._sequence = 0
        self._delta = (
            b'event: response.output_text.delta\ndata: {"content_index":0,"delta":',
            b',"item_id":' + go_json(self.item_id) + b',"logprobs":[],"output_index":0,'
            b'"sequence_number":',
            b',"type":"response.output_text.delta"}\n\n',
        )

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = data | {"type": kind, "sequence_number": self._sequence}
        self._sequence += 1
        # The stream's payloads are Go maps: keys sorted.
        return b"event: " + kind.encode() + b"\ndata: " + go_json(data, sort_keys=True) + b"\n\n"

    def _part(self, content: str) -> dict[str, Any]:
        return {"type": "output_text", "text": content, "annotations": [], "logprobs": []}

    def _item(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _response(self, status: str, output: list[Any], metrics: Timings | None) -> dict[str, Any]:
        body = self.body
        instructions = body.get("instructions") or None
        usage = None
        if metrics is not None:
            prompt, completion = metrics.prompt_eval_count, metrics.eval_count
            usage = {
                "input_tokens": prompt,
                "output_tokens": completion,
                "total_tokens": prompt + completion,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": None,
            "model": self.model,
            "previous_response_id": None,
            "instructions": instructions,
            "output": output,
            "error": None,
            "tools": body.get("tools") or [],
            "tool_choice": "auto",
            "truncation": body.get("truncation") or "disabled",
            "parallel_tool_calls": True,
            "text": {"format": {"type": "text"}},
            "top_p": body.get("top_p", 1),
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "top_logprobs": 0,
            "temperature": body.get("temperature", 1),
            "reasoning": None,
            "usage": usage,
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "store": False,
            "background": bool(body.get("background")),
            "service_tier": "default",
            "metadata": {},
            "safety_identifier": None,
            "prompt_cache_key": None,
        }

    def opening(self) -> bytes:
        pending = self._response("in_progress", [], None)
        return b"".join(
            (
                self._event("response.created", {"response": pending}),
                self._event("response.in_progress", {"response": pending}),
                self._event(
                    "response.output_item.added",
                    {"output_index": 0, "item": self._item("in_progress", [])},
                ),
                self._event(
                    "response.content_part.added",
                    {
                        "item_id": self.item_id,
                        "output_index": 0,
                        "content_index": 0,
                        "part": self._part(""),
                    },
                ),
            )
        )

    def chunk(self, kind: int, token: bytes) -> bytes:
        sequence = b"%d" % self._sequence
        self._sequence += 1
        return b"".join((self._delta[0], token, self._delta[1], sequence, self._delta[2]))

    def closing(self, metrics: Timings) -> bytes:
        content = self.answer.content
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        item = self._item("completed", [self._part(content)])
        return b"".join(
            (
                self._event("response.output_text.done", where | {"text": content, "logprobs": []}),
                self._event("response.content_part.done", where | {"part": self._part(content)}),
                self._event("response.output_item.done", {"output_index": 0, "item": item}),
                self._event(
                    "response.completed",
                    {"response": self._response("completed", [item], metrics)},
                ),
            )
        )

    def stream_error(self, message: str) -> bytes:
        return self._event("error", {"code": "api_error", "message": message, "param": None})

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        return openai_error(status, message)

    def whole(self, metrics: Timings) -> web.StreamResponse:
        item = self._item("completed", [self._part(self.answer.content)])
        return encoded(self._response("completed", [item], metrics), JSON)


class Responses:
    """Handler of ``/v1/responses``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def responses(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_body(request, "openai.ResponsesRequest")
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            messages = [{"role": "user", "content": raw_input}]
        else:
            messages = flat_messages(raw_input)
        instructions = text(body, "instructions", "ResponsesRequest")
        name = text(body, "model", "ResponsesRequest")
        model = chat_model(self.sim, name, None)
        answer = compose(
            self.sim.name,
            said_in(messages),
            message_words(messages) + words(instructions),
            answer_tokens=self.sim.answer_tokens,
            options=max_tokens_option(body, "max_output_tokens"),
        )
        return await simulator_playback.deliver(
            self.sim,
            request,
            model,
            answer,
            ResponsesEncoder(name, answer, body),
            stream=bool(body.get("stream")),
            keep_alive=None,
            started_ns=started_ns,
        )


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    return [("POST", "/v1/responses", Responses(sim).responses)]
