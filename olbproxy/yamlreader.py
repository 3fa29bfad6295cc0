"""Reading the config file's YAML into Settings fields, typed by the dataclasses.

``Reader`` checks one mapping at a time against a settings dataclass: unknown keys
(with a "did you mean"), each value converted to its field's annotated type, lists of
nested dataclasses, and the runner options a group may pin. Every error names the file
and the key path, so config.py's ``load()`` only says which section is which class.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from collections.abc import Mapping as MappingABC
from dataclasses import MISSING, fields, is_dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from olbproxy.errors import ConfigError
from olbproxy.settings import PinnedOptions

# Runner options (prompt.RUNNER_OPTIONS) a group may pin, and the type each takes.
_PINNABLE: dict[str, type] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "num_thread": int,
    "use_mmap": bool,
}


class Reader:
    """Typed access to one YAML mapping, with errors that name the file and key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def mapping(self, key: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        for name in value:
            if name not in allowed:
                near = difflib.get_close_matches(str(name), sorted(allowed), n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                where = f"{key}.{name}" if key else str(name)
                raise self.fail(where, f"unknown key{hint}")
        return dict(value)

    def convert(self, key: str, value: Any, kind: Any) -> Any:
        """Convert one value to a dataclass field's (resolved) type."""
        args = get_args(kind)
        if get_origin(kind) in (Union, UnionType):
            if value is None and type(None) in args:
                return None
            kind = next(a for a in args if a is not type(None))
            args = get_args(kind)
        if get_origin(kind) is Literal:
            if value not in args:
                choices = ", ".join(map(str, args))
                raise self.fail(key, f"must be one of {choices}, got {value!r}")
            return value
        if kind is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"expected a whole number, got {value!r}")
            return value
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(key, f"expected a number of seconds, got {value!r}")
            return float(value)
        if get_origin(kind) in (dict, Mapping, MappingABC):
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise self.fail(key, f"expected a mapping, got {value!r}")
            return dict(value)
        if get_origin(kind) is tuple and isinstance(args[0], type) and is_dataclass(args[0]):
            if not isinstance(value, list):
                raise self.fail(key, f"expected a list of mappings, got {value!r}")
            item_type: Any = args[0]
            names = {f.name for f in fields(item_type)}
            required = [f.name for f in fields(item_type) if f.default is MISSING]
            items = []
            for i, item in enumerate(value):
                where = f"{key}[{i}]"
                data = self.mapping(where, item, names)
                for name in required:
                    if name not in data:
                        raise self.fail(f"{where}.{name}", "is required")
                items.append(item_type(**self.dataclass_fields(where, data, item_type)))
            return tuple(items)
        if get_origin(kind) is tuple:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
                raise self.fail(key, f"expected a list of strings, got {value!r}")
            return tuple(str(v) for v in value)
        if kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise self.fail(key, f"expected a string, got {value!r}")
            return str(value)
        raise self.fail(key, f"unsupported setting type {kind}")  # pragma: no cover

    def pins(self, key: str, value: Any) -> PinnedOptions:
        """``pin_options``: a mapping of runner options to the values every request gets."""
        options = self.mapping(key, value, set(_PINNABLE))
        pinned: list[tuple[str, int | bool]] = []
        for name, given in sorted(options.items()):
            kind = _PINNABLE[name]
            if kind is bool:
                pinned.append((name, self.convert(f"{key}.{name}", given, bool)))
                continue
            number = self.convert(f"{key}.{name}", given, int)
            if number < 0 or (name == "num_ctx" and number < 1):
                raise self.fail(f"{key}.{name}", f"must be a positive number, got {number}")
            pinned.append((name, number))
        return tuple(pinned)

    def dataclass_fields(
        self, key: str, raw: dict[str, Any], cls: type, skip: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        hints = get_type_hints(cls)
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in raw and f.name not in skip:
                where = f"{key}.{f.name}" if key else f.name
                if f.name == "pin_options":
                    out[f.name] = self.pins(where, raw[f.name])
                    continue
                out[f.name] = self.convert(where, raw[f.name], hints[f.name])
        return out
