"""Ollama's native embedding routes for the simulator: embed and (legacy) embeddings.

Vectors are unit vectors derived from the text, so the same input always embeds the same
way. :meth:`Embeddings.embed_vectors` schedules the model like any model request (faults
included) and also serves ``/v1/embeddings`` (openai.py).
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator.answer import words
from olbproxy.simulator.wire import (
    Rejected,
    error_reply,
    field,
    keep_alive_seconds,
    read_object,
    reply,
    text,
)

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel

Handler = Callable[[web.Request], Any]


def embedding(content: str, dimensions: int) -> list[float]:
    """A unit vector derived from the text, with float32-friendly short decimals."""
    seed = int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    vector = []
    for x in raw:
        value = round(x / norm, 6)
        # Keep clear of 0 and of exponents: Go prints float32 0 as "0", 1e-05 as "0.00001".
        if abs(value) < 1e-4:
            value = 1e-4 if x >= 0 else -1e-4
        vector.append(value)
    return vector


def base64_floats(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


@dataclass(frozen=True, slots=True)
class Embedded:
    """Vectors for the inputs, with what the final answer reports."""

    vectors: list[list[float]]
    load_ns: int
    words: int


def _renormalized(vector: list[float], dimensions: int) -> list[float]:
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut)) or 1.0
    return [round(x / norm, 6) or 1e-4 for x in cut]


class Embeddings:
    """Handlers of /api/embed and /api/embeddings."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def embed_vectors(
        self, model: SimulatedModel, inputs: list[str], keep_alive: float | None, dimensions: int
    ) -> Embedded | tuple[int, str]:
        """Schedule the model and embed, or ``(status, message)`` from a fault."""
        started_ns = time.perf_counter_ns()
        with self.sim.model_call():
            refusal = await self.sim.admit()
            if refusal is not None:
                return refusal
            await self.sim.load(model, keep_alive)
            self.sim.release(model, keep_alive)
            load_ns = max(1, time.perf_counter_ns() - started_ns)
            vectors = [embedding(item, model.embedding_length) for item in inputs]
            if 0 < dimensions < model.embedding_length:
                vectors = [_renormalized(v, dimensions) for v in vectors]
            return Embedded(vectors, load_ns, sum(words(item) for item in inputs))

    async def embed(self, request: web.Request) -> web.StreamResponse:
        started_ns = time.perf_counter_ns()
        body = await read_object(request, "api.EmbedRequest")
        name = text(body, "model", "EmbedRequest")
        if not name.strip():
            raise Rejected(404, f"model '{name}' not found")
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list) and all(isinstance(i, str) for i in raw_input):
            inputs = list(raw_input)
        elif raw_input is None:
            inputs = []
        else:
            raise Rejected(400, "invalid input type")
        model = self.sim.resolve(name)
        if model is None:
            raise Rejected(404, f"model '{name}' not found")
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
        dimensions = field(body, "dimensions", int, "EmbedRequest") or 0
        embedded = await self.embed_vectors(model, inputs, keep_alive, dimensions)
        if isinstance(embedded, tuple):
            return error_reply(*embedded)
        if not inputs:
            return reply({"model": name, "embeddings": []})
        answer: dict[str, Any] = {
            "model": name,
            "embeddings": embedded.vectors,
            "total_duration": max(1, time.perf_counter_ns() - started_ns),
            "load_duration": embedded.load_ns,
        }
        if embedded.words:
            answer["prompt_eval_count"] = embedded.words
        return reply(answer)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.EmbeddingRequest")
        name = text(body, "model", "EmbeddingRequest")
        if not name.strip():
            raise Rejected(400, "model is required")
        model = self.sim.resolve(name)
        if model is None:
            raise Rejected(404, f'model "{name}" not found, try pulling it first')
        prompt = text(body, "prompt", "EmbeddingRequest")
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
        embedded = await self.embed_vectors(model, [prompt] if prompt else [], keep_alive, 0)
        if isinstance(embedded, tuple):
            return error_reply(*embedded)
        if not prompt:
            return reply({"embedding": []})
        # The legacy route answers float64s converted from the model's float32s.
        return reply({"embedding": array("f", embedded.vectors[0]).tolist()})


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    embeddings = Embeddings(sim)
    return [
        ("POST", "/api/embed", embeddings.embed),
        ("POST", "/api/embeddings", embeddings.embeddings),
    ]
