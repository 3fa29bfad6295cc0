"""The request body: read within the size limit and parsed once, the way Ollama reads it.

Ollama decodes a JSON body whatever its ``Content-Type``, so every JSON route parses its
body as JSON, once; routing, authorisation, limits, recording and forwarding all use that
one reading (``read_json`` keeps it on the request). The original bytes are what the
backend receives, so fields Ollama adds tomorrow pass through untouched.

The parser is as strict as Go's ``encoding/json`` where a difference could be used to
make the proxy and Ollama read one body two ways:

* not UTF-8, a byte order mark, a lone surrogate, ``NaN``, numbers out of range and
  nesting beyond 1024 levels are refused (orjson refuses all of them);
* Go matches object keys to struct fields case-insensitively and keeps the last match,
  so ``{"model": "a", "MODEL": "b"}`` is ``b`` to Ollama: wherever Ollama decodes into its
  own structs (the top level, ``messages[]`` items, their ``tool_calls[]`` and those
  calls' ``function``), a key must be written in lowercase ASCII, which every client does.
  Free-form values (``options``, ``format``, tool schemas, tool arguments) keep their keys
  as written: Go keeps those as maps, case-sensitively, like Python.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from olbproxy.errors import BadRequest, PayloadTooLarge, RequestTimeout
from olbproxy.settings import GroupSettings

# Fields whose type we rely on; everything else is the backend's business.
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "name": (str,),
    "stream": (bool,),
    "prompt": (str,),
    "messages": (list,),
    "options": (dict,),
    "keep_alive": (str, int, float),
    "input": (str, list),
}

# What isinstance() takes for a JSON number. A tuple, not ``int | float``: that builds
# a union object on every call, which cost more than the check (callgrind: 2,300
# instructions against 950), and the request path checks numbers a dozen times.
NUMBER = (int, float)

_JSON_NAMES = {
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "an object",
    int: "a number",
    float: "a number",
}

# The parsed body of a request, read once (``read_json``).
BODY = web.RequestKey("body", dict)
RAW = web.RequestKey("raw_body", bytes)


async def read_json(
    request: web.Request, limit: int, seconds: float = 60.0
) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed object; 413 beyond ``limit``, 408 when slower than
    ``seconds``, 400 when it is not a JSON object Ollama would read the same way."""
    if BODY in request:
        return request[RAW], request[BODY]
    raw = await read_bytes(request, limit, seconds)
    data = parse_json(raw)
    request[RAW], request[BODY] = raw, data
    return raw, data


async def read_bytes(request: web.Request, limit: int, seconds: float = 60.0) -> bytes:
    """The whole body; 413 beyond ``limit``, 408 when slower than ``seconds``."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)
    try:
        if request.content.is_eof():  # all of it came with the headers: nothing to wait for
            raw = await request.read()
        else:
            async with asyncio.timeout(seconds):
                raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(None, limit) from None
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {seconds:g}s") from None
    return raw


def form_field(raw: bytes, content_type: str, name: str) -> str:
    """A text field of a multipart/form-data body (``/v1/audio/transcriptions``'s
    ``model``); 400 when the body is not such a form or lacks the field."""
    kind, _, params = content_type.partition(";")
    boundary = ""
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if kind.strip().lower() != "multipart/form-data" or not boundary:
        raise BadRequest("expected a multipart/form-data body with a boundary")
    wanted = f'name="{name}"'.encode()
    for part in raw.split(b"--" + boundary.encode()):
        head, _, content = part.partition(b"\r\n\r\n")
        if wanted in head and b"filename=" not in head:
            try:
                return content.removesuffix(b"\r\n").decode("utf-8").strip()
            except UnicodeDecodeError:
                break
    raise BadRequest(f"form field '{name}' is required")


def form_field_or(raw: bytes, content_type: str, name: str, default: str) -> str:
    try:
        return form_field(raw, content_type, name)
    except BadRequest:
        return default


def parse_json(raw: bytes) -> dict[str, Any]:
    """One JSON object, checked as described in the module docstring; 400 otherwise."""
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    _check_keys(data, "")
    messages = data.get("messages")
    if isinstance(messages, list) and messages:
        _check_messages(messages)
    for key, kinds in _TYPES.items():
        value = data.get(key)
        if value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            names = " or ".join(dict.fromkeys(_JSON_NAMES[k] for k in kinds))
            raise BadRequest(f"field '{key}' must be {names}, got {type(value).__name__}")
    return data


def _check_keys(keys: Any, where: str) -> None:
    for key in keys:
        if not key.isascii() or key != key.lower():
            raise BadRequest(
                f"field '{where}{key}': Ollama matches field names ignoring case; "
                "write them in lowercase"
            )


def _check_messages(messages: list[Any]) -> None:
    # Whole-list operations in C: a chat may carry 100,000 messages.
    if set(map(type, messages)) != {dict}:
        raise BadRequest("field 'messages' must be an array of objects")
    keys: set[str] = set().union(*messages)
    _check_keys(keys, "messages[].")
    if "tool_calls" not in keys:
        return
    for message in messages:
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for call in calls:
            if isinstance(call, dict):
                _check_keys(call, "messages[].tool_calls[].")
                function = call.get("function")
                if isinstance(function, dict):
                    _check_keys(function, "messages[].tool_calls[].function.")


def too_large(size: int | None, limit: int) -> PayloadTooLarge:
    got = f" ({size} bytes)" if size is not None else ""
    return PayloadTooLarge(f"request body too large{got}: the limit is {limit} bytes")


def model_of(data: dict[str, Any], *, field: str = "model", legacy_name: bool = False) -> str:
    """The model a request names; 400 when missing. ``legacy_name``: Ollama's deprecated
    ``name`` counts too (show, pull, push, create, delete), as Ollama reads it: only when
    ``model`` is empty."""
    model = data.get(field)
    if not model and legacy_name:
        model = data.get("name")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(f"{field} is required")
    return model.strip()


def wants_stream(data: dict[str, Any], *, default: bool) -> bool:
    value = data.get("stream", default)
    return default if value is None else bool(value)


def is_load_request(endpoint: str, data: dict[str, Any]) -> bool:
    """Ollama's load/unload idiom: /api/generate without prompt, /api/chat without messages."""
    if endpoint == "/api/generate":
        return not data.get("prompt") and not data.get("images") and not data.get("suffix")
    if endpoint == "/api/chat":
        return not data.get("messages")
    return False


def check_limits(data: dict[str, Any], group: GroupSettings) -> None:
    """Refuse option values beyond the group's configured limits (400 naming the field)."""
    options = data.get("options") or {}
    limits = (
        ("options.num_ctx", options.get("num_ctx"), group.max_num_ctx),
        ("options.num_predict", options.get("num_predict"), group.max_num_predict),
        # The OpenAI-compatible layer maps these onto num_predict.
        ("max_tokens", data.get("max_tokens"), group.max_num_predict),
        ("max_completion_tokens", data.get("max_completion_tokens"), group.max_num_predict),
        ("max_output_tokens", data.get("max_output_tokens"), group.max_num_predict),
    )
    for name, value, limit in limits:
        if limit is None or value is None:
            continue
        if not isinstance(value, NUMBER) or isinstance(value, bool):
            raise BadRequest(f"{name} must be a number")
        # num_predict -1/-2 mean "no limit", which is what a configured limit rules out.
        if value > limit or value < 0:
            raise BadRequest(
                f"{name}={value:g} is beyond this server's limit of {limit} for group "
                f"{group.name!r}"
            )
