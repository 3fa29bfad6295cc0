"""The simulator's OpenAI compatibility layer: its shape, and ``/v1`` embeddings and models.

Ollama runs it as gin middleware that rewrites the request for the native handler and the
native answer into OpenAI's shape (``openai/openai.go``, ``middleware/openai.go``); the
simulator produces that shape directly. Errors are
``{"error":{"message","type","param","code"}}``. The helpers here also serve
``completions.py`` (chat completions and completions), ``responses.py`` and
``anthropic.py``.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator import embedding as simulator_embedding
from olbproxy.simulator import library as simulator_library
from olbproxy.simulator.embedding import base64_floats
from olbproxy.simulator.native import thinks
from olbproxy.simulator.wire import (
    JSON,
    JSON_UTF8,
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
_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


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


def max_tokens_option(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return {"num_predict": value}
    return None


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


class Compatibility:
    """Handlers of /v1/embeddings, /v1/models and /v1/audio/transcriptions."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

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
        ("POST", "/v1/embeddings", compat.embeddings),
        ("GET", "/v1/models", compat.models),
        ("GET", "/v1/models/{model}", compat.model),
        ("POST", "/v1/audio/transcriptions", compat.transcriptions),
    ]
