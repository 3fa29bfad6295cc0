"""A request's prompt as the cost model counts it: rendered, in tokens, shared by prefix.

The prompt is rendered the way Ollama's (gpt-oss-like) template renders it, and every
``BYTES_PER_TOKEN`` bytes of the rendering count as one token (costs.py explains why).
What a slot caches is such a rendering, followed by the rendered answer; the part of a new
prompt already cached is their :func:`common_prefix`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from olbproxy.simulator.answer import Reply

BYTES_PER_TOKEN = 4


def tokens(size: int) -> int:
    return math.ceil(size / BYTES_PER_TOKEN)


def common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix (memcmp by binary search, no copies)."""
    n = min(len(a), len(b))
    view = memoryview(b)
    if a.startswith(view[:n]):
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a.startswith(view[:mid]):
            lo = mid
        else:
            hi = mid
    return lo


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return "".join(p for p in parts if isinstance(p, str))
    return "" if content is None else json.dumps(content, sort_keys=True)


def _calls(calls: Any) -> str:
    if not isinstance(calls, list) or not calls:
        return ""
    named = []
    for call in calls:
        spec = call.get("function") if isinstance(call, dict) else None
        spec = spec if isinstance(spec, dict) else (call if isinstance(call, dict) else {})
        arguments = spec.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                arguments = json.loads(arguments)
        named.append([spec.get("name"), arguments])
    return json.dumps(named, sort_keys=True, ensure_ascii=False)


def _turn(role: str, text: str) -> str:
    return f"<|start|>{role}<|message|>{text}<|end|>"


def render(body: Mapping[str, Any]) -> bytes:
    """The prompt as Ollama's (gpt-oss-like) template renders it, ending with the
    generation prompt; raw generate requests are their prompt as is."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) and body.get("raw"):
        return (prompt + _text(body.get("suffix"))).encode()
    think = body.get("think", body.get("reasoning_effort"))
    system = [_text(body.get("system", body.get("instructions")))]
    raw = body.get("messages", body.get("input"))
    messages: Sequence[Any] = [{"role": "user", "content": raw}] if isinstance(raw, str) else []
    if isinstance(raw, list):
        messages = [m for m in raw if isinstance(m, dict)]
    lead = 0
    while lead < len(messages) and str(messages[lead].get("role")).lower() in (
        "system",
        "developer",
    ):
        system.append(_text(messages[lead].get("content")))
        lead += 1
    parts = [_turn("system", f"Reasoning: {think}\n" + "\n".join(s for s in system if s))]
    tools = body.get("tools")
    if tools:
        parts.append(_turn("developer", "# Tools\n" + json.dumps(tools, sort_keys=True)))
    context = body.get("context")
    if isinstance(context, list) and context:
        parts.append(" ".join(str(t) for t in context))
    for message in messages[lead:]:
        role = str(message.get("role") or "user").lower()
        parts.append(_turn(role, _text(message.get("content")) + _calls(message.get("tool_calls"))))
    if isinstance(prompt, str):
        parts.append(_turn("user", prompt + _text(body.get("suffix"))))
    parts.append("<|start|>assistant")
    return "".join(parts).encode("utf-8", "surrogatepass")


def rendered_answer(answer: Reply) -> bytes:
    """What decoding the answer leaves in the slot after the generation prompt."""
    thinking = ""
    if answer.thinking:
        thinking = f"<|channel|>analysis<|message|>{answer.thinking}<|end|><|start|>assistant"
    calls = _calls([answer.tool_call.native()]) if answer.tool_call is not None else ""
    return f"{thinking}<|message|>{answer.content}{calls}<|end|>".encode()
