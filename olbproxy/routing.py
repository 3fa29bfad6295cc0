"""Routing: which group serves a requested model. Pure, no I/O.

Model names compare the way Ollama compares them: case-insensitively, and a name
without a tag means ``name:latest``. Patterns may be exact names or globs
(``*:20b``); the first group in file order whose patterns match wins, and a group
whose patterns include ``*`` takes whatever nobody else lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from olbproxy.cache import Bounded
from olbproxy.errors import Forbidden, ModelNotFound
from olbproxy.settings import GroupSettings

_GLOB_CHARS = frozenset("*?[")


def normalise_model(name: str) -> str:
    """``gpt-oss`` -> ``gpt-oss:latest``; a tag is only looked for in the last path segment."""
    # Remembered: a small request normalises its model five times (routing, placement,
    # metrics), and the team uses a handful of names.
    known = _NORMALISED.get(name)
    if known is None:
        known = _normalised(name)
        if len(name) <= 256:
            _NORMALISED.put(name, known)
    return known


def _normalised(name: str) -> str:
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    if name and ":" not in last:
        name += ":latest"
    return name


_NORMALISED_MAX = 4096  # a client inventing names cannot grow it past this
_NORMALISED: Bounded[str, str] = Bounded(_NORMALISED_MAX)


def is_cloud(model: str) -> bool:
    """Ollama's cloud models (``name:cloud``, ``name:tag-cloud``): an instance forwards
    them, prompt and all, to ollama.com."""
    tag = normalise_model(model).rsplit(":", 1)[-1]
    return tag == "cloud" or tag.endswith("-cloud")


def _is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


def _normalise_pattern(pattern: str) -> str:
    return pattern.strip().lower() if _is_glob(pattern) else normalise_model(pattern)


class Router:
    """Maps model names to groups; results are memoised since clients reuse few names."""

    MEMO = 4096  # model names remembered; a client inventing names cannot grow it

    def __init__(self, groups: Sequence[GroupSettings]) -> None:
        self.apply(groups)

    def apply(self, groups: Sequence[GroupSettings]) -> None:
        """Take a new routing table (SIGHUP reload); in-flight requests keep their group."""
        self.groups = tuple(groups)
        self._patterns = [
            (group, tuple(_normalise_pattern(p) for p in group.models)) for group in self.groups
        ]
        self._memo: Bounded[str, tuple[GroupSettings | None]] = Bounded(self.MEMO)

    def route(self, model: str, allowed: frozenset[str] | None) -> GroupSettings:
        """The group for model, for a caller allowed ``allowed`` groups (None: all)."""
        group = self.group_for(model)
        if group is None:
            raise ModelNotFound(model)
        if allowed is not None and group.name not in allowed:
            raise Forbidden(f"you may not use model '{model}' (group {group.name!r})")
        if is_cloud(model) and not group.allow_cloud:
            raise Forbidden(
                f"model '{model}' runs on ollama.com, outside this network: this server does "
                f"not send prompts there (a group may allow it: allow_cloud)"
            )
        return group

    def group_for(self, model: str) -> GroupSettings | None:
        key = normalise_model(model)
        known = self._memo.get(key)
        if known is not None:
            return known[0]
        found = next(
            (
                group
                for group, patterns in self._patterns
                if any(p == key or (_is_glob(p) and fnmatchcase(key, p)) for p in patterns)
            ),
            None,
        )
        self._memo.put(key, (found,))
        return found

    def serves(self, model: str) -> bool:
        return self.group_for(model) is not None

    def overlaps(self) -> list[str]:
        """Warnings for check-config: patterns that an earlier group already takes."""
        warnings: list[str] = []
        for j, (later, later_patterns) in enumerate(self._patterns):
            for earlier, earlier_patterns in self._patterns[:j]:
                for pattern in later_patterns:
                    if any(
                        e == pattern or (_is_glob(e) and fnmatchcase(pattern, e))
                        for e in earlier_patterns
                    ):
                        warnings.append(
                            f"group {later.name!r}: {pattern!r} is never routed there, "
                            f"group {earlier.name!r} (earlier in the file) takes it first"
                        )
                    elif _is_glob(pattern) and any(
                        fnmatchcase(e, pattern) for e in earlier_patterns if not _is_glob(e)
                    ):
                        warnings.append(
                            f"group {later.name!r}: {pattern!r} overlaps group "
                            f"{earlier.name!r}; the earlier group wins where both match"
                        )
        return warnings
