"""Ollama's native inference routes for the simulator: generate and chat.

Validation follows ``server/routes.go`` step by step, because clients and the proxy see its
order: the model reference, existence, the unload shortcut, ``think`` support, the
completion capability, then scheduling (where the ``busy`` fault answers 503). Streamed
chunks are built from byte templates: ``{"model":…,"created_at":"…","message":{…},"done":false}``
with the token spliced in, in Go's field order. The embedding routes are embedding.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator import answer as simulator_answer
from olbproxy.simulator import playback as simulator_playback
from olbproxy.simulator.answer import CONTENT, THINKING, Reply, Timings, compose, words
from olbproxy.simulator.wire import (
    CLOCK,
    JSON,
    JSON_UTF8,
    NDJSON,
    Rejected,
    error_reply,
    field,
    go_json,
    go_kind,
    keep_alive_seconds,
    read_object,
    reply,
    stream_flag,
    text,
    think_value,
)

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel

Handler = Callable[[web.Request], Any]


def _stamp() -> str:
    return CLOCK.stamp().decode()


def thinks(think: bool | str | None) -> bool:
    return think is not None and think is not False


class ChatEncoder:
    """NDJSON chunks of /api/chat (``api.ChatResponse``)."""

    content_type = NDJSON

    def __init__(self, model: str, answer: Reply) -> None:
        self.model = model
        self.answer = answer
        self._head = b'{"model":' + go_json(model) + b',"created_at":"'
        self._content = b'","message":{"role":"assistant","content":'
        self._thinking = b'","message":{"role":"assistant","content":"","thinking":'
        self._tail = b'},"done":false}\n'

    def opening(self) -> bytes:
        return b""

    def chunk(self, kind: int, token: bytes) -> bytes:
        if kind == CONTENT:
            return b"".join((self._head, CLOCK.stamp(), self._content, token, self._tail))
        if kind == THINKING:
            return b"".join((self._head, CLOCK.stamp(), self._thinking, token, self._tail))
        call = self.answer.tool_call
        calls = go_json([call.native()]) if call is not None else b"[]"
        middle = b'","message":{"role":"assistant","content":"","tool_calls":'
        return b"".join((self._head, CLOCK.stamp(), middle, calls, self._tail))

    def _final(self, message: dict[str, Any], metrics: Timings) -> dict[str, Any]:
        return {
            "model": self.model,
            "created_at": _stamp(),
            "message": message,
            "done": True,
            "done_reason": self.answer.done_reason,
            **metrics.fields(),
        }

    def closing(self, metrics: Timings) -> bytes:
        message = {"role": "assistant", "content": ""}
        return go_json(self._final(message, metrics)) + b"\n"

    def stream_error(self, message: str) -> bytes:
        return go_json({"error": message}) + b"\n"

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        return error_reply(status, message, content_type=JSON if streaming else JSON_UTF8)

    def whole(self, metrics: Timings) -> web.StreamResponse:
        answer = self.answer
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.thinking:
            message["thinking"] = answer.thinking
        if answer.tool_call is not None:
            message["tool_calls"] = [answer.tool_call.native()]
        return reply(self._final(message, metrics))


class GenerateEncoder:
    """NDJSON chunks of /api/generate (``api.GenerateResponse``)."""

    content_type = NDJSON

    def __init__(self, model: str, answer: Reply, prompt: str, *, raw: bool) -> None:
        self.model = model
        self.answer = answer
        self.prompt = prompt
        self.raw = raw
        self._head = b'{"model":' + go_json(model) + b',"created_at":"'
        self._content = b'","response":'
        self._thinking = b'","response":"","thinking":'
        self._tail = b',"done":false}\n'

    def opening(self) -> bytes:
        return b""

    def chunk(self, kind: int, token: bytes) -> bytes:
        middle = self._content if kind == CONTENT else self._thinking
        return b"".join((self._head, CLOCK.stamp(), middle, token, self._tail))

    def _final(self, response: str, thinking: str, metrics: Timings) -> dict[str, Any]:
        final: dict[str, Any] = {"model": self.model, "created_at": _stamp(), "response": response}
        if thinking:
            final["thinking"] = thinking
        final["done"] = True
        final["done_reason"] = self.answer.done_reason
        if not self.raw:
            said = self.prompt + " " + self.answer.thinking + self.answer.content
            final["context"] = simulator_answer.context_tokens(said)
        final.update(metrics.fields())
        return final

    def closing(self, metrics: Timings) -> bytes:
        return go_json(self._final("", "", metrics)) + b"\n"

    def stream_error(self, message: str) -> bytes:
        return go_json({"error": message}) + b"\n"

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        return error_reply(status, message, content_type=JSON if streaming else JSON_UTF8)

    def whole(self, metrics: Timings) -> web.StreamResponse:
        answer = self.answer
        return reply(self._final(answer.content, answer.thinking, metrics))


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = field(body, "messages", list, "ChatRequest") or []
    for message in messages:
        if not isinstance(message, dict):
            raise Rejected(
                400,
                f"json: cannot unmarshal {go_kind(message)} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        for key in ("role", "content"):
            field(message, key, str, "Message")
    return list(messages)


def said_in(messages: list[dict[str, Any]]) -> str:
    """The last user message, the prompt a simulated model answers."""
    for message in reversed(messages):
        if str(message.get("role", "")).lower() == "user":
            return str(message.get("content") or "")
    return str(messages[-1].get("content") or "") if messages else ""


def message_words(messages: list[dict[str, Any]]) -> int:
    return sum(words(str(m.get("content") or "")) for m in messages)


class NativeInference:
    """Handlers of /api/generate and /api/chat."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def _lifecycle(self, model: str, reason: str, *, chat: bool) -> web.Response:
        answer: dict[str, Any] = {"model": model, "created_at": _stamp()}
        if chat:
            answer["message"] = {"role": "assistant", "content": ""}
        else:
            answer["response"] = ""
        answer["done"] = True
        answer["done_reason"] = reason
        return reply(answer)

    async def _load_only(
        self,
        model: SimulatedModel,
        name: str,
        keep_alive: float | None,
        *,
        chat: bool,
        options: object = None,
    ) -> web.StreamResponse:
        # An empty prompt or message list only loads the model: one JSON answer.
        with self.sim.model_call():
            refusal = await self.sim.admit()
            if refusal is not None:
                return error_reply(*refusal)
            await self.sim.load(model, keep_alive, options)
            self.sim.release(model, keep_alive)
            return self._lifecycle(name, "load", chat=chat)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_object(request, "api.GenerateRequest")
        name = text(body, "model", "GenerateRequest")
        model = self.sim.resolve(name) if name.strip() else None
        if model is None:
            raise Rejected(404, f"model '{name}' not found")
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
        prompt = text(body, "prompt", "GenerateRequest")
        if not prompt and keep_alive == 0:
            self.sim.unload(model)
            return self._lifecycle(name, "unload", chat=False)
        raw = bool(field(body, "raw", bool, "GenerateRequest"))
        system = text(body, "system", "GenerateRequest")
        if raw and (text(body, "template", "GenerateRequest") or system or body.get("context")):
            raise Rejected(400, "raw mode does not support template, system, or context")
        think = think_value(body.get("think"))
        if thinks(think) and not model.thinking:
            raise Rejected(400, f'"{name}" does not support thinking')
        if model.embedding:
            raise Rejected(400, f'"{name}" does not support generate')
        if not prompt:
            return await self._load_only(
                model, name, keep_alive, chat=False, options=body.get("options")
            )
        suffix = text(body, "suffix", "GenerateRequest")
        answer = compose(
            self.sim.name,
            prompt,
            words(system) + words(prompt) + words(suffix),
            answer_tokens=self.sim.answer_tokens,
            options=body.get("options"),
            think=think if model.thinking else None,
        )
        return await simulator_playback.deliver(
            self.sim,
            request,
            model,
            answer,
            GenerateEncoder(name, answer, prompt, raw=raw),
            stream=stream_flag(body, "GenerateRequest"),
            keep_alive=keep_alive,
            started_ns=started_ns,
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_object(request, "api.ChatRequest")
        name = text(body, "model", "ChatRequest")
        if not name.strip():
            raise Rejected(400, "model is required")
        model = self.sim.resolve(name)
        if model is None:
            raise Rejected(404, f"model '{name}' not found")
        messages = _messages(body)
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
        if not messages and keep_alive == 0:
            self.sim.unload(model)
            return self._lifecycle(name, "unload", chat=True)
        tools = field(body, "tools", list, "ChatRequest")
        think = think_value(body.get("think"))
        if thinks(think) and not model.thinking:
            raise Rejected(400, f'"{name}" does not support thinking')
        if model.embedding:
            raise Rejected(400, f'"{name}" does not support chat')
        if not messages:
            return await self._load_only(
                model, name, keep_alive, chat=True, options=body.get("options")
            )
        answer = compose(
            self.sim.name,
            said_in(messages),
            message_words(messages),
            answer_tokens=self.sim.answer_tokens,
            options=body.get("options"),
            think=think if model.thinking else None,
            tools=tools,
        )
        return await simulator_playback.deliver(
            self.sim,
            request,
            model,
            answer,
            ChatEncoder(name, answer),
            stream=stream_flag(body, "ChatRequest"),
            keep_alive=keep_alive,
            started_ns=started_ns,
        )


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    native = NativeInference(sim)
    return [
        ("POST", "/api/generate", native.generate),
        ("POST", "/api/chat", native.chat),
    ]
