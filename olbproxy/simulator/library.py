"""The simulator's model library: list, show, ps, pull, push, create, copy, delete, blobs.

Shapes follow ``api/types.go`` (``ListModelResponse``, ``ProcessModelResponse``,
``ShowResponse``, ``ProgressResponse``) in Go field order; maps such as ``model_info`` are
sorted by key, as Go marshals maps. Progress routes stream NDJSON unless ``stream`` is false,
in which case they answer only the last status, as Ollama's ``waitForStream`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from olbproxy.simulator.wire import (
    JSON,
    NDJSON,
    TEXT_UTF8,
    Rejected,
    canonical_name,
    error_reply,
    field,
    go_json,
    read_object,
    reply,
    rfc3339,
    stream_flag,
    text,
)

if TYPE_CHECKING:
    from olbproxy.simulator.call import Simulator
    from olbproxy.simulator.models import SimulatedModel

Handler = Callable[[web.Request], Any]
Progress = dict[str, Any]

_DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
LICENSE = "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/"
CHAT_TEMPLATE = (
    "{{- range .Messages }}<|start|>{{ .Role }}<|message|>{{ .Content }}<|end|>"
    "{{- end }}<|start|>assistant"
)


def details(model: SimulatedModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _parameter_count(size: str) -> int:
    try:
        return int(float(size[:-1]) * _SCALE.get(size[-1:].upper(), 1.0))
    except ValueError:
        return 0


def model_info(model: SimulatedModel) -> dict[str, Any]:
    """A GGUF key/value digest; clients read ``<arch>.context_length`` from it."""
    arch = model.family
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": model.name.partition(":")[0],
        "general.file_type": 4,
        "general.parameter_count": _parameter_count(model.parameter_size),
        "general.quantization_version": 2,
        f"{arch}.block_count": 24,
        f"{arch}.context_length": model.context_length,
        f"{arch}.embedding_length": model.embedding_length,
        "tokenizer.ggml.model": "gpt2",
    }
    if model.embedding:
        info[f"{arch}.pooling_type"] = 1
    return dict(sorted(info.items()))


def layers(model: SimulatedModel) -> list[tuple[str, int]]:
    """(digest, size) of the blobs a pull or push moves: weights, template, license, params."""
    sizes = [max(model.size - 13_000, 1), 7_240, 11_357, 18]
    return [
        (f"sha256:{hashlib.sha256(f'{model.name}/{i}'.encode()).hexdigest()}", size)
        for i, size in enumerate(sizes)
    ]


def _transfer(verb: str, model: SimulatedModel) -> Iterator[Progress]:
    for digest, size in layers(model):
        status = f"{verb} {digest[7:19]}"
        yield {"status": status, "digest": digest, "total": size}
        yield {"status": status, "digest": digest, "total": size, "completed": size // 2}
        yield {"status": status, "digest": digest, "total": size, "completed": size}


def _model_name(body: dict[str, Any], go_type: str) -> str:
    return text(body, "model", go_type) or text(body, "name", go_type)


class Library:
    """Handlers of the model-management routes and the plain ones (``/``, version)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"Ollama is running", headers={"Content-Type": TEXT_UTF8})

    async def version(self, request: web.Request) -> web.StreamResponse:
        return reply({"version": self.sim.version})

    async def status(self, request: web.Request) -> web.StreamResponse:
        disabled = self.sim.cloud_disabled
        return reply({"cloud": {"disabled": disabled, "source": "env" if disabled else "none"}})

    def listed(self) -> list[SimulatedModel]:
        """Models newest first, as /api/tags orders them."""
        sim = self.sim
        names = sorted(sim.models, key=lambda n: sim.modified_at.get(n, 0.0), reverse=True)
        return [sim.models[name] for name in names]

    async def tags(self, request: web.Request) -> web.StreamResponse:
        models = [
            {
                "name": model.name,
                "model": model.name,
                "modified_at": rfc3339(self.sim.modified_at.get(model.name, 0.0)),
                "size": model.size,
                "digest": model.digest,
                "details": details(model),
                "capabilities": model.capabilities,
            }
            for model in self.listed()
        ]
        return reply({"models": models})

    async def ps(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        now_mono, now_wall = time.monotonic(), time.time()
        running = []
        for name in list(sim.loaded):
            model = sim.models.get(name)
            if model is None or not sim.is_loaded(name):
                continue
            expires_in = min(sim.loaded[name] - now_mono, (2**63 - 1) / 1e9)
            running.append((sim.loaded[name], model, now_wall + max(expires_in, 0.0)))
        running.sort(key=lambda item: item[0], reverse=True)
        models = [
            {
                "name": model.name,
                "model": model.name,
                "size": model.size,
                "digest": model.digest,
                "details": details(model),
                "expires_at": rfc3339(expires_at),
                "size_vram": model.size,
                "context_length": sim.context_lengths.get(
                    model.name, min(model.context_length, 4096)
                ),
            }
            for _, model, expires_at in running
        ]
        return reply({"models": models})

    async def show(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.ShowRequest")
        name = _model_name(body, "ShowRequest")
        if not name:
            raise Rejected(400, "model is required")
        model = self.sim.resolve(name)
        if model is None:
            raise Rejected(404, f"model '{canonical_name(name)}' not found")
        template = "{{ .Prompt }}" if model.embedding else CHAT_TEMPLATE
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {model.name}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{layers(model)[0][0][7:]}\n"
            f'TEMPLATE """{template}"""\n'
            "PARAMETER temperature 1\n"
            f'LICENSE """{LICENSE}"""\n'
        )
        return reply(
            {
                "license": LICENSE,
                "modelfile": modelfile,
                "parameters": f"{'temperature':<30} 1",
                "template": template,
                "details": details(model),
                "model_info": model_info(model),
                "capabilities": model.capabilities,
                "modified_at": rfc3339(self.sim.modified_at.get(model.name, 0.0)),
            }
        )

    async def _progress(
        self, request: web.Request, lines: Iterator[Progress], *, stream: bool
    ) -> web.StreamResponse:
        """Play progress lines; an ``{"error"}`` line ends them (500 if nothing went out)."""
        if not stream:
            last: Progress = {}
            for line in lines:
                if "error" in line:
                    return error_reply(500, line["error"], content_type=JSON)
                last = line
            return reply(last, content_type=JSON)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        for line in lines:
            if "error" in line and not response.prepared:
                return error_reply(500, line["error"], content_type=JSON)
            if not response.prepared:
                await response.prepare(request)
            await response.write(go_json(line) + b"\n")
        return response

    def _pulling(self, model: SimulatedModel) -> Iterator[Progress]:
        yield {"status": "pulling manifest"}
        yield from _transfer("pulling", model)
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        self.sim.add_model(model)

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.PullRequest")
        name = _model_name(body, "PullRequest")
        if not name.strip():
            raise Rejected(400, "invalid model name")
        model = self.sim.resolve(name) or self.sim.catalog(name)

        def lines() -> Iterator[Progress]:
            yield from self._pulling(model)
            yield {"status": "success"}

        return await self._progress(request, lines(), stream=stream_flag(body, "PullRequest"))

    async def push(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.PushRequest")
        name = _model_name(body, "PushRequest")
        if not name:
            raise Rejected(400, "model is required")
        model = self.sim.resolve(name)

        def lines() -> Iterator[Progress]:
            yield {"status": "retrieving manifest"}
            if model is None:
                yield {"status": "couldn't retrieve manifest"}
                yield {"error": f"model '{name}' not found"}
                return
            yield from _transfer("pushing", model)
            yield {"status": "pushing manifest"}
            yield {"status": "success"}

        return await self._progress(request, lines(), stream=stream_flag(body, "PushRequest"))

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.CreateRequest")
        files = field(body, "files", dict, "CreateRequest") or {}
        for digest in files.values():
            if not isinstance(digest, str) or not digest:
                raise Rejected(400, "invalid digest format")
        name = _model_name(body, "CreateRequest")
        if not name.strip():
            raise Rejected(400, "invalid model name")
        source = text(body, "from", "CreateRequest")
        if not source and not files:
            raise Rejected(400, "neither 'from' or 'files' was specified")
        missing = [d for d in files.values() if d.replace("-", ":", 1) not in self.sim.blobs]
        if not source and missing:
            raise Rejected(400, f'blob "{missing[0]}" not found')
        sim = self.sim
        base = sim.resolve(source) if source else None

        def lines() -> Iterator[Progress]:
            parent = base
            if source and parent is None:
                # Like Ollama, a missing base model is pulled first.
                parent = sim.catalog(source)
                yield from self._pulling(parent)
            if parent is None:
                yield {"status": "parsing GGUF"}
                parent = sim.catalog(name)
                digests = [d.replace("-", ":", 1) for d in files.values()]
            else:
                digests = [digest for digest, _ in layers(parent)]
            for digest in digests:
                yield {"status": f"using existing layer {digest}"}
            yield {"status": "writing manifest"}
            sim.add_model(dataclasses.replace(parent, name=name))
            yield {"status": "success"}

        return await self._progress(request, lines(), stream=stream_flag(body, "CreateRequest"))

    async def copy(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.CopyRequest")
        source = text(body, "source", "CopyRequest")
        destination = text(body, "destination", "CopyRequest")
        if not source.strip():
            raise Rejected(400, f'source "{source}" is invalid')
        if not destination.strip():
            raise Rejected(400, f'destination "{destination}" is invalid')
        model = self.sim.resolve(source)
        if model is None:
            raise Rejected(404, f'model "{source}" not found')
        self.sim.add_model(dataclasses.replace(model, name=destination))
        return web.Response()

    async def delete(self, request: web.Request) -> web.StreamResponse:
        body = await read_object(request, "api.DeleteRequest")
        name = _model_name(body, "DeleteRequest")
        if not name.strip():
            raise Rejected(400, "model is required")
        model = self.sim.resolve(name)
        if model is None or not self.sim.remove_model(model.name):
            raise Rejected(404, f"model '{name}' not found")
        return web.Response()

    async def head_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not _DIGEST.match(digest):
            raise Rejected(400, "invalid digest format")
        if digest.replace("-", ":", 1) not in self.sim.blobs:
            raise Rejected(404, f'blob "{digest}" not found')
        return web.Response()

    async def create_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not _DIGEST.match(digest):
            raise Rejected(400, "invalid digest format")
        wanted = digest.replace("-", ":", 1)
        if wanted in self.sim.blobs:
            return web.Response()
        hasher = hashlib.sha256()
        # Chunk by chunk: blobs are model weights, gigabytes in real life.
        async for chunk in request.content.iter_chunked(1 << 16):
            hasher.update(chunk)
        got = f"sha256:{hasher.hexdigest()}"
        if got != wanted.lower():
            raise Rejected(400, f'digest mismatch, expected "{digest}", got "{got}"')
        self.sim.blobs.add(wanted)
        self.sim.changed()
        return web.Response(status=201)


def routes(sim: Simulator) -> list[tuple[str, str, Handler]]:
    library = Library(sim)
    return [
        ("GET", "/", library.root),
        ("HEAD", "/", library.root),
        ("GET", "/api/version", library.version),
        ("HEAD", "/api/version", library.version),
        ("GET", "/api/tags", library.tags),
        ("HEAD", "/api/tags", library.tags),
        ("GET", "/api/ps", library.ps),
        ("GET", "/api/status", library.status),
        ("POST", "/api/show", library.show),
        ("POST", "/api/pull", library.pull),
        ("POST", "/api/push", library.push),
        ("POST", "/api/create", library.create),
        ("POST", "/api/copy", library.copy),
        ("DELETE", "/api/delete", library.delete),
        ("HEAD", "/api/blobs/{digest}", library.head_blob),
        ("POST", "/api/blobs/{digest}", library.create_blob),
    ]
