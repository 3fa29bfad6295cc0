"""The catalog: answers that no single backend can give, merged from all of them.

``/api/tags`` and ``/api/ps`` list each model once, and only models the router sends
to a group that backend belongs to (every instance on one Mac sees the same model
store, but a model no group serves would only earn the client a 404). A backend that
does not answer leaves out only its own part. ``/api/version`` is the lowest version
among healthy backends, as Open WebUI computes it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from olbproxy.errors import Unavailable
from olbproxy.pool import Backend, Pool
from olbproxy.routing import Router, normalise_model
from olbproxy.settings import GroupSettings
from olbproxy.upstream import Upstream

Allowed = Callable[[GroupSettings], bool]


def version_key(version: str) -> tuple[int, ...]:
    core = re.sub(r"^v|-.*$", "", version.strip())
    try:
        return tuple(int(part) for part in core.split("."))
    except ValueError:
        return (0,)


class Catalog:
    def __init__(self, pool: Pool, router: Router, upstream: Upstream, *, seconds: float) -> None:
        self.pool = pool
        self.router = router
        self.upstream = upstream
        self.seconds = seconds

    async def _gather(self, path: str, backends: list[Backend]) -> dict[Backend, Any]:
        async def one(backend: Backend) -> Any:
            status, data = await self.upstream.fetch_json(
                backend, "GET", path, seconds=self.seconds
            )
            return data if status == 200 else None

        results = await asyncio.gather(*(one(b) for b in backends), return_exceptions=True)
        return {b: r for b, r in zip(backends, results, strict=True) if isinstance(r, dict)}

    def _models(self, answers: dict[Backend, Any], allowed: Allowed) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for backend, answer in answers.items():
            member_of = {g.settings.name for g in self.pool.groups_of(backend)}
            for model in answer.get("models") or []:
                if not isinstance(model, dict):
                    continue
                name = str(model.get("name") or model.get("model") or "")
                group = self.router.group_for(name) if name else None
                if group is None or group.name not in member_of or not allowed(group):
                    continue
                key = normalise_model(name)
                known = merged.get(key)
                if known is None:
                    merged[key] = {**model, "name": name, "model": model.get("model") or name}
                elif str(model.get("expires_at", "")) > str(known.get("expires_at", "")):
                    merged[key] = {**known, "expires_at": model["expires_at"]}
        return merged

    def _backends(self, allowed: Allowed) -> list[Backend]:
        """Backends of the groups the caller may use: nobody makes a backend of a group
        they may not use answer anything, not even a listing."""
        found: dict[str, Backend] = {}
        for group in self.pool.groups.values():
            if allowed(group.settings):
                found.update((b.url, b) for b in group.backends)
        return list(found.values())

    async def tags(self, allowed: Allowed) -> dict[str, Any]:
        answers = await self._gather("/api/tags", self._backends(allowed))
        return {"models": list(self._models(answers, allowed).values())}

    async def ps(self, allowed: Allowed) -> dict[str, Any]:
        answers = await self._gather("/api/ps", self._backends(allowed))
        for backend, answer in answers.items():
            backend.note_ps(answer)
        models = list(self._models(answers, allowed).values())
        models.sort(key=lambda m: str(m.get("expires_at", "")), reverse=True)
        return {"models": models}

    async def version(self, allowed: Allowed) -> str | None:
        healthy = [b for b in self._backends(allowed) if b.healthy]
        unknown = [b for b in healthy if b.version is None]
        if unknown:
            for backend, answer in (await self._gather("/api/version", unknown)).items():
                backend.version = str(answer.get("version") or "") or None
        versions = [b.version for b in healthy if b.version]
        return min(versions, key=version_key) if versions else None

    async def status(self, allowed: Allowed) -> dict[str, Any]:
        """``/api/status``: cloud use is disabled if any instance says it is (the stricter
        answer is the true one for a client that may land on any of them)."""
        answers = await self._gather("/api/status", self._backends(allowed))
        if not answers:
            raise Unavailable("no instance answered /api/status")
        clouds = [a["cloud"] for a in answers.values() if isinstance(a.get("cloud"), dict)]
        disabled = [c for c in clouds if c.get("disabled")]
        cloud = (disabled or clouds or [{"disabled": False, "source": "default"}])[0]
        return {"cloud": {"disabled": bool(cloud.get("disabled")), "source": cloud.get("source")}}

    async def openai_models(
        self, allowed: Allowed, extra: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> dict[str, Any]:
        tags = await self.tags(allowed)
        models = tags["models"] + extra(tags["models"])
        data = [_openai_model(m) for m in models]
        return {"object": "list", "data": data or None}


def _openai_model(model: dict[str, Any]) -> dict[str, Any]:
    name = str(model["name"])
    owner = name.split("/")[-2] if "/" in name else "library"
    try:
        created = int(datetime.fromisoformat(str(model.get("modified_at"))).timestamp())
    except ValueError:
        created = 0
    return {"id": name, "object": "model", "created": created, "owned_by": owner}
