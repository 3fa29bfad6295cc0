"""The simulator's ``/v1/messages``: Anthropic's Messages API as Ollama's layer speaks it.

Faithful in shape to ``anthropic/anthropic.go``: ``thinking`` (with ``thinking: {"type":
"enabled"}``), ``text`` and ``tool_use`` content blocks (a ``call:`` prompt with ``tools``).
Streamed: ``message_start``; per block ``content_block_start``, one ``content_block_delta``
per token (a tool call's input in one ``input_json_delta``), ``content_block_stop``; then
``message_delta`` (stop reason, usage) and ``message_stop``. Errors come in Anthropic's
shape, with a ``request_id``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator import playback as simulator_playback
from olbproxy.simulator.answer import CONTENT, THINKING, TOOL, Reply, Timings, compose, words
from olbproxy.simulator.native import message_words, said_in
from olbproxy.simulator.openai import (
    chat_model,
    encoded,
    flat_messages,
    max_tokens_option,
    read_body,
    text_of,
)
from olbproxy.simulator.wire import JSON, SSE, Rejected, field, go_json, text

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator

Handler = Callable[[web.Request], Any]
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> web.Response:
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    body = {"type": "error", "error": error, "request_id": f"req_{os.urandom(12).hex()}"}
    return encoded(body, JSON, status)


def render_rejection(rejected: Rejected) -> web.Response:
    return anthropic_error(rejected.status, rejected.message)


class MessagesEncoder:
    """Anthropic Messages API: ``message_start`` … ``message_stop`` events, or one message.

    Streamed as Ollama's ``StreamConverter`` does: a block opens when its first piece
    arrives (``thinking``, then ``text``) and closes when another kind begins; each tool
    call is a whole ``tool_use`` block (start, one ``input_json_delta``, stop).
    """

    content_type = SSE

    def __init__(self, model: str, answer: Reply) -> None:
        self.model = model
        self.answer = answer
        self.id = f"msg_{os.urandom(12).hex()}"
        self._index = 0
        self._open: int | None = None  # the kind (THINKING or CONTENT) of the open block
        self._delta = {
            kind: (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
                b',"delta":{"type":"' + name + b'_delta","' + name + b'":',
            )
            for kind, name in ((THINKING, b"thinking"), (CONTENT, b"text"))
        }

    @staticmethod
    def _event(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + go_json(data) + b"\n\n"

    def _stop_reason(self) -> str:
        if self.answer.tool_call is not None:
            return "tool_use"
        reason = self.answer.done_reason
        return {"stop": "end_turn", "length": "max_tokens"}.get(reason, reason and "stop_sequence")

    def _message(self, content: list[dict[str, Any]], metrics: Timings | None) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
        }
        if metrics is not None and self._stop_reason():
            message["stop_reason"] = self._stop_reason()
        output_tokens = metrics.eval_count if metrics is not None else 0
        input_tokens = self.answer.prompt_eval_count
        message["usage"] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        return message

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        self._index += 1
        stop = {"type": "content_block_stop", "index": self._index - 1}
        return self._event("content_block_stop", stop)

    def _start(self, block: dict[str, Any]) -> bytes:
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return self._event("content_block_start", start)

    def opening(self) -> bytes:
        return self._event(
            "message_start", {"type": "message_start", "message": self._message([], None)}
        )

    def chunk(self, kind: int, token: bytes) -> bytes:
        call = self.answer.tool_call
        if kind == TOOL and call is not None:
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": go_json(call.arguments).decode()}
            data = {"type": "content_block_delta", "index": self._index, "delta": delta}
            opened = self._close() + self._start(block)
            self._open = TOOL
            return opened + self._event("content_block_delta", data) + self._close()
        head = b""
        if self._open != kind:
            head = self._close()
            name = "thinking" if kind == THINKING else "text"
            head += self._start({"type": name, name: ""})
            self._open = kind
        prefix, middle = self._delta[kind]
        return b"".join((head, prefix, b"%d" % self._index, middle, token, b"}}\n\n"))

    def closing(self, metrics: Timings) -> bytes:
        delta = {"stop_reason": self._stop_reason()} if self._stop_reason() else {}
        usage = {"input_tokens": metrics.prompt_eval_count, "output_tokens": metrics.eval_count}
        return b"".join(
            (
                self._close(),
                self._event(
                    "message_delta", {"type": "message_delta", "delta": delta, "usage": usage}
                ),
                self._event("message_stop", {"type": "message_stop"}),
            )
        )

    def stream_error(self, message: str) -> bytes:
        error = {"type": "api_error", "message": message}
        return self._event("error", {"type": "error", "error": error})

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        return anthropic_error(status, message)

    def whole(self, metrics: Timings) -> web.StreamResponse:
        answer = self.answer
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append({"type": "thinking", "thinking": answer.thinking})
        if answer.content:
            content.append({"type": "text", "text": answer.content})
        if answer.tool_call is not None:
            call = answer.tool_call
            content.append(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
            )
        return encoded(self._message(content, metrics), JSON)


class Messages:
    """Handler of ``/v1/messages``."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def messages(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_body(request, "anthropic.MessagesRequest")
        messages = flat_messages(body.get("messages"))
        system = text_of(body.get("system"))
        name = text(body, "model", "MessagesRequest")
        thinking = body.get("thinking")
        think = isinstance(thinking, dict) and thinking.get("type") == "enabled"
        model = chat_model(self.sim, name, think)
        answer = compose(
            self.sim.name,
            said_in(messages),
            message_words(messages) + words(system),
            answer_tokens=self.sim.answer_tokens,
            options=max_tokens_option(body, "max_tokens"),
            think=think if model.thinking else None,
            tools=field(body, "tools", list, "MessagesRequest"),
        )
        return await simulator_playback.deliver(
            self.sim,
            request,
            model,
            answer,
            MessagesEncoder(name, answer),
            stream=bool(body.get("stream")),
            keep_alive=None,
            started_ns=started_ns,
        )


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    return [("POST", "/v1/messages", Messages(sim).messages)]
