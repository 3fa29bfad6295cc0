"""Aliases: model names users see that stand for a model with default request fields.

``gpt-oss:120b-high`` may mean ``gpt-oss:120b`` with ``think: high`` and a larger
``num_ctx``. This is the one place the proxy rewrites a request body: a request naming
an alias gets a new body (the alias's model, its defaults merged in) and that body is
what is authorised, placed, limited, forwarded and recorded, as if the client had sent
it. A client's own values win over an alias's defaults, unless the alias says ``force``.
Aliases are listed in ``/api/tags`` (and ``/v1/models``) beside the model they stand
for, for the callers who may use that model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from olbproxy.routing import normalise_model
from olbproxy.settings import AliasSettings


class Aliases:
    """The configured aliases, by normalised name."""

    def __init__(self, aliases: Iterable[AliasSettings]) -> None:
        self._by_name = {normalise_model(alias.name): alias for alias in aliases}

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def get(self, model: str) -> AliasSettings | None:
        return self._by_name.get(normalise_model(model)) if self._by_name else None

    def target(self, model: str) -> str:
        """The model a name stands for (itself when it is no alias)."""
        alias = self.get(model)
        return alias.model if alias is not None else model

    def rewrite(self, alias: AliasSettings, data: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """The body a request naming ``alias`` is served as: bytes and parsed object."""
        body = {**data, "model": alias.model}
        body.pop("name", None)  # Ollama's legacy spelling of the model: it is ours now
        for key, value in alias.defaults.items():
            mine = body.get(key)
            if key == "options" and isinstance(value, Mapping) and isinstance(mine, Mapping):
                body[key] = {**mine, **value} if alias.force else {**value, **mine}
            elif alias.force or key not in body:
                body[key] = value
        return orjson.dumps(body), body

    def listed(self, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Entries for the aliases whose model is among ``models`` (a listing's entries)."""
        by_name = {normalise_model(str(m.get("name") or m.get("model"))): m for m in models}
        extra = []
        for name, alias in self._by_name.items():
            target = by_name.get(normalise_model(alias.model))
            if target is not None and name not in by_name:
                extra.append({**target, "name": alias.name, "model": alias.name})
        return extra
