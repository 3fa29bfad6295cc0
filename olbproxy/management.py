"""Model management: pull, push, create, copy, delete and blobs, for admins only.

Instances started by one user on one Mac share one model store (~/.ollama/models),
so by default each operation goes to one backend of the model's group (the first
healthy one, so that a blob upload and the /api/create that uses it meet). A group
whose instances live on separate hosts (``model_store: separate``) gets each
operation on every backend in turn, with the progress streamed back.

Every operation an admin starts goes to the audit trail (audit.py) before it is sent.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from olbproxy.attempt import Deadlines
from olbproxy.audit import AuditTrail
from olbproxy.body import model_of, read_json, wants_stream
from olbproxy.cache import Bounded
from olbproxy.edge import MATCH, Route, route, upstream_path
from olbproxy.errors import BadRequest, NotFound, Unavailable
from olbproxy.exchange import Exchange
from olbproxy.pool import Backend, FixedPlacement, Group, Pool
from olbproxy.relay import Relay
from olbproxy.routing import Router
from olbproxy.settings import Settings
from olbproxy.upstream import Failure

BLOB_HOMES = 4096  # uploaded blobs whose instance is remembered
ADMINS_ONLY = "model management (pull, push, create, copy, delete, blobs) is for admins"
# Ollama's blob names: the digest of the content, exactly this shape.
DIGEST = re.compile(r"sha256[:-][0-9a-f]{64}")


class ModelManagement:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        router: Router,
        relay: Relay,
        audit: AuditTrail,
    ) -> None:
        self.settings = settings
        self.audit = audit
        self.pool = pool
        self.router = router
        self.relay = relay
        # Which backend holds an uploaded blob, so the /api/create naming it goes there.
        self.blob_homes: Bounded[str, Backend] = Bounded(BLOB_HOMES)

    def routes(self) -> list[Route]:
        table = [
            ("/api/pull", ("POST",), self.manage),
            ("/api/push", ("POST",), self.manage),
            ("/api/create", ("POST",), self.manage),
            ("/api/copy", ("POST",), self.manage),
            ("/api/delete", ("DELETE",), self.manage),
            ("/api/blobs/{digest}", ("HEAD", "POST"), self.blob),
        ]
        return [
            r
            for path, methods, handler in table
            for r in route(path, methods, handler, "admin", refusal=ADMINS_ONLY)
        ]

    async def manage(self, request: web.Request) -> web.StreamResponse:
        raw, data = await read_json(
            request, self.settings.max_body_bytes, self.settings.body_timeout
        )
        endpoint = request[MATCH].route.path
        if endpoint == "/api/copy":
            model = model_of(data, field="source")
        else:
            model = model_of(data, legacy_name=True)
        settings = self.router.group_for(model)
        if settings is None:
            raise NotFound(
                f"no group serves model '{model}': add it to a group's models "
                f"in {self.settings.source}"
            )
        group = self.pool.groups[settings.name]
        self.audit.request(request, "model." + endpoint.rsplit("/", 1)[-1], model)
        if settings.model_store == "separate":
            return await self._each(request, group, raw, stream=wants_stream(data, default=True))
        order = group.healthy()
        home = self._blob_home(data, group)
        if home is not None:
            order = [home, *(b for b in order if b is not home)]
        exchange = Exchange(endpoint=endpoint, model=model, group=group.name)
        return await self.relay.forward(
            request,
            exchange,
            FixedPlacement(order),
            path=upstream_path(request),
            body=raw,
            # Pulls of tens of GB pause while verifying: no idle limit here.
            deadlines=Deadlines(first_byte=settings.first_byte_timeout),
            attempts=max(1, len(order)),
        )

    def _blob_home(self, data: dict[str, object], group: Group) -> Backend | None:
        files = data.get("files")
        if request_files := files if isinstance(files, dict) else None:
            for digest in request_files.values():
                home = self.blob_homes.get(str(digest))
                if home is not None and home in group.backends and home.healthy:
                    return home
        return None

    async def blob(self, request: web.Request) -> web.StreamResponse:
        digest = request[MATCH].params["digest"]
        if not DIGEST.fullmatch(digest):
            raise BadRequest(f"invalid blob name {digest!r}: expected sha256:<64 hex digits>")
        backend = self.blob_homes.get(digest) or self.pool.steward()
        if backend is None:
            raise Unavailable("no healthy backend to hold the blob")
        if request.method == "POST":
            self.audit.request(request, "model.blob", digest)
        body = request.content if request.method == "POST" else None
        response = await self.relay.forward(
            request,
            Exchange(endpoint="/api/blobs"),
            FixedPlacement([backend]),
            path=upstream_path(request),
            body=body,  # streamed, never buffered whole: blobs are gigabytes
            deadlines=Deadlines(first_byte=None),
        )
        if response.status < 300:
            self.blob_homes.put(digest, backend)
        return response

    async def _each(
        self, request: web.Request, group: Group, raw: bytes, *, stream: bool
    ) -> web.StreamResponse:
        """Separate model stores: the operation on every backend in turn."""
        backends = group.backends
        operation = request[MATCH].path.rsplit("/", 1)[-1]
        if not stream:
            answer: tuple[int, str, bytes] = (200, "application/json", b"")
            for backend in backends:
                answer = await self.relay.send_whole(
                    request, backend, upstream_path(request), raw, seconds=None
                )
                if answer[0] >= 400:
                    break
            status, content_type, body = answer
            return web.Response(status=status, body=body, headers={"Content-Type": content_type})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for i, backend in enumerate(backends, 1):
            status_line = {"status": f"{operation} on {backend.label} ({i}/{len(backends)})"}
            await response.write(json.dumps(status_line).encode() + b"\n")
            error = await self._stream_one(request, response, backend, raw, last=i == len(backends))
            if error:
                await response.write(json.dumps({"error": f"{backend.label}: {error}"}).encode())
                await response.write(b"\n")
                break
        await response.write_eof()
        return response

    async def _stream_one(
        self,
        request: web.Request,
        response: web.StreamResponse,
        backend: Backend,
        raw: bytes,
        *,
        last: bool,
    ) -> str | None:
        try:
            async with self.relay.upstream.streaming(
                request,
                backend,
                upstream_path(request),
                raw,
                connect=self.settings.connect_timeout,
            ) as upstream:
                if upstream.status >= 400:
                    text = (await upstream.read()).decode(errors="replace")
                    return f"answered {upstream.status}: {text.strip()}"
                async for line in upstream.content:
                    # Only the last backend's "success" ends the client's stream.
                    if last or b'"success"' not in line:
                        await response.write(line)
        except Failure as failure:
            return f"failed: {failure.message}"
        return None
