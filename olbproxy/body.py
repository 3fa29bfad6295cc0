"""The request body: read within the size limit, parsed once, and the facts routing needs.

The parsed JSON is only looked at; the original bytes are what the backend receives,
so fields Ollama adds tomorrow pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

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


async def read_json(
    request: web.Request, limit: int, seconds: float = 60.0
) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed object; 413 beyond ``limit``, 408 when slower than
    ``seconds``, 400 when not a JSON object."""
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
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"invalid JSON in request body: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    for key, kinds in _TYPES.items():
        value = data.get(key)
        if value is not None and (
            not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        ):
            names = " or ".join(dict.fromkeys(_JSON_NAMES[k] for k in kinds))
            raise BadRequest(f"field '{key}' must be {names}, got {type(value).__name__}")
    return raw, data


_JSON_NAMES = {
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "an object",
    int: "a number",
    float: "a number",
}


def too_large(size: int | None, limit: int) -> PayloadTooLarge:
    got = f" ({size} bytes)" if size is not None else ""
    return PayloadTooLarge(f"request body too large{got}: the limit is {limit} bytes")


def model_of(data: dict[str, Any], *, field: str = "model") -> str:
    """The model a request names (``name`` is Ollama's legacy alias); 400 when missing."""
    model = data.get(field) or (data.get("name") if field == "model" else None)
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
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadRequest(f"{name} must be a number")
        # num_predict -1/-2 mean "no limit", which is what a configured limit rules out.
        if value > limit or value < 0:
            raise BadRequest(
                f"{name}={value:g} is beyond this server's limit of {limit} for group "
                f"{group.name!r}"
            )
