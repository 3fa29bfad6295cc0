"""The simulator's OpenAI compatibility layer: ``/v1`` chat, completions, embeddings, models.

Ollama runs it as gin middleware that rewrites the request for the native handler and the
native answer into OpenAI's shape (``openai/openai.go``, ``middleware/openai.go``); the
simulator produces that shape directly from an :class:`Reply`. Streams are SSE frames
``data: {json}\n\n`` ending with ``data: [DONE]\n\n``; errors are
``{"error":{"message","type","param","code"}}``. The helpers here also serve
``responses.py`` and ``anthropic.py``.
"""

from __future__ import annotations

import email
import email.policy
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator import embedding as simulator_embedding
from olbproxy.simulator import library as simulator_library
from olbproxy.simulator import playback as simulator_playback
from olbproxy.simulator.answer import CONTENT, THINKING, Reply, Timings, compose, words
from olbproxy.simulator.embedding import base64_floats
from olbproxy.simulator.native import message_words, said_in, thinks
from olbproxy.simulator.wire import (
    JSON,
    JSON_UTF8,
    SSE,
    Rejected,
    canonical_name,
    field,
    go_json,
    read_object,
    text,
)

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel

Handler = Callable[[web.Request], Any]
DONE = b"data: [DONE]\n\n"
_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max"}
_EFFORTS |= {"xhigh": "max", "ultra": "max"}


def encoded(value: Any, content_type: str, status: int = 200) -> web.Response:
    # The compatibility writers use json.NewEncoder: a trailing newline, no charset.
    return web.Response(
        status=status, body=go_json(value) + b"\n", headers={"Content-Type": content_type}
    )


def openai_error(status: int, message: str, *, early: bool = False) -> web.Response:
    error = {"message": message, "type": _OPENAI_TYPES.get(status, "api_error")}
    body = {"error": error | {"param": None, "code": None}}
    if early:  # c.AbortWithStatusJSON in the middleware itself
        return web.Response(status=status, body=go_json(body), headers={"Content-Type": JSON_UTF8})
    return encoded(body, JSON, status)


def render_rejection(rejected: Rejected) -> web.Response:
    return openai_error(rejected.status, rejected.message, early=rejected.early)


async def read_body(request: web.Request, go_type: str) -> dict[str, Any]:
    try:
        return await read_object(request, go_type)
    except Rejected as rejected:
        # gin's ShouldBindJSON says "EOF" where the native handlers say "missing request body".
        message = "EOF" if rejected.message == "missing request body" else rejected.message
        raise Rejected(400, message, early=True) from None


def text_of(content: object) -> str:
    """Message content as text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def flat_messages(raw: object) -> list[dict[str, Any]]:
    items = raw if isinstance(raw, list) else []
    return [
        {"role": str(m.get("role", "")), "content": text_of(m.get("content"))}
        for m in items
        if isinstance(m, dict)
    ]


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


def max_tokens_option(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return {"num_predict": value}
    return None


def token_usage(metrics: Timings) -> dict[str, int]:
    prompt, completion = metrics.prompt_eval_count, metrics.eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_model(sim: Simulator, name: str, think: bool | str | None) -> SimulatedModel:
    """The model a chat-like request names, refused as Ollama's ChatHandler would."""
    if not name.strip():
        raise Rejected(400, "model is required")
    model = sim.resolve(name)
    if model is None:
        raise Rejected(404, f"model '{name}' not found")
    if thinks(think) and not model.thinking:
        raise Rejected(400, f'"{name}" does not support thinking')
    if model.embedding:
        raise Rejected(400, f'"{name}" does not support chat')
    return model


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


class Compatibility:
    """Handlers of the ``/v1`` routes."""

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

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request, "openai.EmbedRequest")
        encoding = text(body, "encoding_format", "EmbedRequest")
        if encoding and encoding.lower() not in ("float", "base64"):
            raise Rejected(
                400,
                f"Invalid value for 'encoding_format' = {encoding}. "
                "Supported values: ['float', 'base64'].",
                early=True,
            )
        raw_input = body.get("input")
        if raw_input == "":
            raw_input = [""]
        if raw_input is None or raw_input == []:
            raise Rejected(400, "invalid input", early=True)
        if isinstance(raw_input, str):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(i, str) for i in raw_input):
            inputs = list(raw_input)
        else:
            raise Rejected(400, "invalid input type")
        name = text(body, "model", "EmbedRequest")
        model = self.sim.resolve(name) if name.strip() else None
        if model is None:
            raise Rejected(404, f"model '{name}' not found")
        dimensions = field(body, "dimensions", int, "EmbedRequest") or 0
        native = simulator_embedding.Embeddings(self.sim)
        embedded = await native.embed_vectors(model, inputs, None, dimensions)
        if isinstance(embedded, tuple):
            return openai_error(*embedded)
        data = []
        for index, vector in enumerate(embedded.vectors):
            value: Any = base64_floats(vector) if encoding.lower() == "base64" else vector
            data.append({"object": "embedding", "embedding": value, "index": index})
        usage = {"prompt_tokens": embedded.words, "total_tokens": embedded.words}
        return encoded({"object": "list", "data": data, "model": name, "usage": usage}, JSON)

    def _model_entry(self, model: SimulatedModel, shown: str) -> dict[str, Any]:
        namespace = shown.rpartition("/")[0].rpartition("/")[2] or "library"
        created = int(self.sim.modified_at.get(model.name, 0.0))
        return {"id": shown, "object": "model", "created": created, "owned_by": namespace}

    async def models(self, request: web.Request) -> web.StreamResponse:
        listed = simulator_library.Library(self.sim).listed()
        data = [self._model_entry(m, m.name) for m in listed] or None
        return encoded({"object": "list", "data": data}, JSON)

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        """``/v1/audio/transcriptions``: a multipart form with ``model`` and ``file``."""
        # The body was read already (the simulator records it): parse it from the bytes.
        head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
        form = email.message_from_bytes(head + await request.read(), policy=email.policy.HTTP)
        fields: dict[str, bytes] = {}
        for part in form.iter_parts() if form.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = payload
        shown = fields.get("model", b"").decode(errors="replace").strip()
        model = self.sim.resolve(shown)
        if model is None:
            raise Rejected(404, f"model '{canonical_name(shown)}' not found")
        size = len(fields.get("file", b""))
        with self.sim.model_call():
            text = f"[{self.sim.name}] heard {size} bytes"
        return encoded({"text": text}, JSON)

    async def model(self, request: web.Request) -> web.StreamResponse:
        shown = request.match_info["model"]
        model = self.sim.resolve(shown)
        if model is None:
            raise Rejected(404, f"model '{canonical_name(shown)}' not found")
        return encoded(self._model_entry(model, shown), JSON)


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    compat = Compatibility(sim)
    return [
        ("POST", "/v1/chat/completions", compat.chat_completions),
        ("POST", "/v1/completions", compat.completions),
        ("POST", "/v1/embeddings", compat.embeddings),
        ("GET", "/v1/models", compat.models),
        ("GET", "/v1/models/{model}", compat.model),
        ("POST", "/v1/audio/transcriptions", compat.transcriptions),
    ]
