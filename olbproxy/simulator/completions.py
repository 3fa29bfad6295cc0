"""The simulator's OpenAI ``/v1/chat/completions`` and ``/v1/completions``.

Ollama's compatibility layer turns the native chat and generate answers into these
(``openai/openai.go``); the simulator writes them directly from a :class:`Reply`.
Streams are SSE frames ``data: {json}\n\n`` ending with ``data: [DONE]\n\n``; errors
come in OpenAI's shape (openai.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator import playback as simulator_playback
from olbproxy.simulator.answer import CONTENT, THINKING, Reply, Timings, compose, words
from olbproxy.simulator.native import message_words, said_in
from olbproxy.simulator.openai import (
    chat_model,
    encoded,
    flat_messages,
    max_tokens_option,
    openai_error,
    read_body,
)
from olbproxy.simulator.wire import JSON, SSE, Rejected, field, go_json, text

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator

Handler = Callable[[web.Request], Any]
DONE = b"data: [DONE]\n\n"
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max"}
_EFFORTS |= {"xhigh": "max", "ultra": "max"}


def _openai_think(body: dict[str, Any]) -> bool | str | None:
    reasoning = body.get("reasoning")
    effort = body.get("reasoning_effort")
    if effort is None and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if effort in (None, ""):
        return None
    if effort == "none":
        return False
    if effort not in _EFFORTS:
        raise Rejected(
            400,
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")',
            early=True,
        )
    return _EFFORTS[str(effort)]


def token_usage(metrics: Timings) -> dict[str, int]:
    prompt, completion = metrics.prompt_eval_count, metrics.eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(answer: Reply) -> str:
    if answer.tool_call is not None and answer.done_reason == "stop":
        return "tool_calls"
    return answer.done_reason


class ChatCompletionEncoder:
    """``chat.completion.chunk`` SSE frames and the ``chat.completion`` object."""

    content_type = SSE

    def __init__(self, model: str, answer: Reply, *, include_usage: bool) -> None:
        self.model = model
        self.answer = answer
        self.include_usage = include_usage
        self.id = f"chatcmpl-{random.randrange(999)}"
        self.created = int(time.time())  # one value for the whole stream, like OpenAI
        head = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "system_fingerprint": "fp_ollama",
        }
        self._head = go_json(head)[:-1]
        self._prefix = b"data: " + self._head + b',"choices":[{"index":0,"delta":{'
        self._open = b'},"finish_reason":null}]}\n\n'
        self._role = b'"role":"assistant",'

    def opening(self) -> bytes:
        return b""

    def _role_once(self) -> bytes:
        role, self._role = self._role, b""
        return role

    def chunk(self, kind: int, token: bytes) -> bytes:
        if kind == CONTENT:
            delta = b'"content":' + token
        elif kind == THINKING:
            delta = b'"content":"","reasoning":' + token
        else:
            call = self.answer.tool_call
            calls = go_json([call.openai()]) if call is not None else b"[]"
            delta = b'"content":"","tool_calls":' + calls
        return b"".join((self._prefix, self._role_once(), delta, self._open))

    def closing(self, metrics: Timings) -> bytes:
        frames = []
        if self._role:  # nothing went out yet: open with the role anyway
            frames.append(self._prefix + self._role_once() + b'"content":""' + self._open)
        reason = go_json(_finish(self.answer))
        frames.append(self._prefix + b'},"finish_reason":' + reason + b"}]}\n\n")
        if self.include_usage:
            usage = go_json(token_usage(metrics))
            frames.append(b"data: " + self._head + b',"choices":[],"usage":' + usage + b"}\n\n")
        frames.append(DONE)
        return b"".join(frames)

    def stream_error(self, message: str) -> bytes:
        error = {"message": message, "type": "api_error", "param": None, "code": None}
        return b"data: " + go_json({"error": error}) + b"\n\n"

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        return openai_error(status, message)

    def whole(self, metrics: Timings) -> web.StreamResponse:
        answer = self.answer
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.thinking:
            message["reasoning"] = answer.thinking
        if answer.tool_call is not None:
            message["tool_calls"] = [answer.tool_call.openai()]
        choice = {"index": 0, "message": message, "finish_reason": _finish(answer)}
        completion = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
            "usage": token_usage(metrics),
        }
        return encoded(completion, JSON)


class CompletionEncoder:
    """``text_completion`` SSE frames (every chunk written, as Ollama's CompleteWriter)."""

    content_type = SSE

    def __init__(self, model: str, answer: Reply, *, include_usage: bool) -> None:
        self.model = model
        self.answer = answer
        self.include_usage = include_usage
        self.id = f"cmpl-{random.randrange(999)}"
        self._prefix = b'data: {"id":' + go_json(self.id) + b',"object":"text_completion"'
        zero = b',"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}'
        self._tail = (
            b',"model":'
            + go_json(model)
            + b',"system_fingerprint":"fp_ollama"'
            + (zero if include_usage else b"")
            + b"}\n\n"
        )

    def opening(self) -> bytes:
        return b""

    def _frame(self, text_json: bytes, reason: bytes) -> bytes:
        return b"".join(
            (
                self._prefix,
                b',"created":%d,"choices":[{"text":' % int(time.time()),
                text_json,
                b',"index":0,"finish_reason":',
                reason,
                b"}]",
                self._tail,
            )
        )

    def chunk(self, kind: int, token: bytes) -> bytes:
        return self._frame(token if kind == CONTENT else b'""', b"null")

    def closing(self, metrics: Timings) -> bytes:
        frames = [self._frame(b'""', go_json(self.answer.done_reason))]
        if self.include_usage:
            created = int(time.time())
            usage = {
                "id": self.id,
                "object": "text_completion",
                "created": created,
                "choices": [],
                "model": self.model,
                "system_fingerprint": "fp_ollama",
                "usage": token_usage(metrics),
            }
            frames.append(b"data: " + go_json(usage) + b"\n\n")
        frames.append(DONE)
        return b"".join(frames)

    def stream_error(self, message: str) -> bytes:
        error = {"message": message, "type": "api_error", "param": None, "code": None}
        return b"data: " + go_json({"error": error}) + b"\n\n"

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        return openai_error(status, message)

    def whole(self, metrics: Timings) -> web.StreamResponse:
        choice = {"text": self.answer.content, "index": 0, "finish_reason": self.answer.done_reason}
        completion = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "fp_ollama",
            "choices": [choice],
            "usage": token_usage(metrics),
        }
        return encoded(completion, JSON)


class Completions:
    """Handlers of /v1/chat/completions and /v1/completions."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_body(request, "openai.ChatCompletionRequest")
        messages = flat_messages(body.get("messages"))
        if not messages:
            raise Rejected(400, "[] is too short - 'messages'", early=True)
        think = _openai_think(body)
        name = text(body, "model", "ChatCompletionRequest")
        model = chat_model(self.sim, name, think)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        answer = compose(
            self.sim.name,
            said_in(messages),
            message_words(messages),
            answer_tokens=self.sim.answer_tokens,
            options=max_tokens_option(body, "max_tokens"),
            think=think if model.thinking else None,
            tools=field(body, "tools", list, "ChatCompletionRequest"),
        )
        return await simulator_playback.deliver(
            self.sim,
            request,
            model,
            answer,
            ChatCompletionEncoder(name, answer, include_usage=include_usage),
            stream=bool(body.get("stream")),
            keep_alive=None,
            started_ns=started_ns,
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_body(request, "openai.CompletionRequest")
        try:
            prompt = text(body, "prompt", "CompletionRequest")
        except Rejected as rejected:
            raise Rejected(400, rejected.message, early=True) from None
        name = text(body, "model", "CompletionRequest")
        model = self.sim.resolve(name) if name.strip() else None
        if model is None:
            raise Rejected(404, f"model '{name}' not found")
        if model.embedding:
            raise Rejected(400, f'"{name}" does not support generate')
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        stream = bool(body.get("stream"))
        if not prompt:
            # The native handler only loads the model; its "load" answer shows through.
            empty = Reply([], "", "", None, "load", 0)
            encoder = CompletionEncoder(name, empty, include_usage=include_usage)
            with self.sim.model_call():
                refusal = await self.sim.admit()
                if refusal is not None:
                    return openai_error(*refusal)
                await self.sim.load(model, None)
                self.sim.release(model, None)
            zero = Timings(0, 0, 0, 0, 0, 0)
            if not stream:
                return encoder.whole(zero)
            body_bytes = encoder.closing(zero)
            return web.Response(body=body_bytes, headers={"Content-Type": SSE})
        answer = compose(
            self.sim.name,
            prompt,
            words(prompt),
            answer_tokens=self.sim.answer_tokens,
            options=max_tokens_option(body, "max_tokens"),
        )
        return await simulator_playback.deliver(
            self.sim,
            request,
            model,
            answer,
            CompletionEncoder(name, answer, include_usage=include_usage),
            stream=stream,
            keep_alive=None,
            started_ns=started_ns,
        )


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    compat = Completions(sim)
    return [
        ("POST", "/v1/chat/completions", compat.chat_completions),
        ("POST", "/v1/completions", compat.completions),
    ]
