"""What a simulated model answers, and the shape its bytes take.

A :class:`Reply` is decided before the first token: a deterministic list of steps
(thinking tokens, content tokens or one tool call), each token already JSON-encoded so a
chunk costs a few byte concatenations. An :class:`Encoder` supplies the bytes of one API
family (native NDJSON, OpenAI SSE, ...) for it, ending with the :class:`Timings` of the
final chunk. How a reply is paced onto the wire is playback.py's.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from olbproxy.simulator.wire import go_json

THINKING, CONTENT, TOOL = 0, 1, 2
THINKING_TOKENS = 3


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The one tool call a simulated model makes (``call:`` prompts with ``tools``)."""

    id: str
    name: str
    arguments: dict[str, Any]

    def native(self) -> dict[str, Any]:
        function = {"index": 0, "name": self.name, "arguments": self.arguments}
        return {"id": self.id, "function": function}

    def openai(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": go_json(self.arguments).decode()}
        return {"id": self.id, "index": 0, "type": "function", "function": function}


@dataclass(slots=True)
class Reply:
    """The whole answer, decided up front; ``steps`` are (kind, JSON-encoded token)."""

    steps: list[tuple[int, bytes]]
    thinking: str
    content: str
    tool_call: ToolCall | None
    done_reason: str
    prompt_eval_count: int


def words(text: str) -> int:
    return len(text.split())


def _num_predict(options: object) -> int | None:
    value = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None  # absent, or -1/-2: until the model stops
    return int(value)


def _first_tool_name(tools: list[Any]) -> str:
    first = tools[0] if isinstance(tools[0], dict) else {}
    function = first.get("function")
    name = function.get("name") if isinstance(function, dict) else first.get("name")
    return name if isinstance(name, str) and name else "tool"


def compose(
    sim_name: str,
    said: str,
    prompt_eval_count: int,
    *,
    answer_tokens: int,
    options: object = None,
    think: bool | str | None = None,
    tools: list[Any] | None = None,
) -> Reply:
    """Words of ``[name] You said: <said>`` cycled to the answer length, one per token."""
    steps: list[tuple[int, bytes]] = []
    thinking = ""
    if think:
        for word in f"[{sim_name}] is thinking".split()[:THINKING_TOKENS]:
            steps.append((THINKING, go_json(word + " ")))
            thinking += word + " "
    if tools and said.startswith("call:"):
        digest = hashlib.sha256(f"{sim_name}|{said}".encode()).hexdigest()
        call = ToolCall(f"call_{digest[:8]}", _first_tool_name(tools), {"query": said[5:].strip()})
        steps.append((TOOL, b""))
        return Reply(steps, thinking, "", call, "stop", prompt_eval_count)
    limit = _num_predict(options)
    count = answer_tokens if limit is None else min(limit, answer_tokens)
    vocabulary = f"[{sim_name}] You said: {said}".split()
    encoded = {word: go_json(word + " ") for word in vocabulary}
    chosen = [vocabulary[i % len(vocabulary)] for i in range(max(count, 0))]
    steps.extend((CONTENT, encoded[word]) for word in chosen)
    content = "".join(word + " " for word in chosen)
    done_reason = "length" if limit is not None and limit < answer_tokens else "stop"
    return Reply(steps, thinking, content, None, done_reason, prompt_eval_count)


def context_tokens(text: str) -> list[int]:
    """Stand-in token ids for /api/generate's ``context``: one per word, stable."""
    return [zlib.crc32(word.encode()) % 200_000 + 1 for word in text.split()]


@dataclass(frozen=True, slots=True)
class Timings:
    """The final chunk's counters; durations in nanoseconds, zeros omitted like Go."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int

    def fields(self) -> dict[str, int]:
        pairs = (
            ("total_duration", self.total_duration),
            ("load_duration", self.load_duration),
            ("prompt_eval_count", self.prompt_eval_count),
            ("prompt_eval_duration", self.prompt_eval_duration),
            ("eval_count", self.eval_count),
            ("eval_duration", self.eval_duration),
        )
        return {key: value for key, value in pairs if value}


class Encoder(Protocol):
    """The bytes of one API family for an answer being delivered."""

    content_type: str  # of the stream

    def opening(self) -> bytes:
        """Sent with the first chunk (SSE preambles); usually empty."""
        ...

    def chunk(self, kind: int, token: bytes) -> bytes: ...

    def closing(self, metrics: Timings) -> bytes: ...

    def stream_error(self, message: str) -> bytes:
        """The failure after the first byte: status 200 already went out."""
        ...

    def rejection(self, status: int, message: str, *, streaming: bool) -> web.StreamResponse:
        """The failure before the first byte, with a real status."""
        ...

    def whole(self, metrics: Timings) -> web.StreamResponse:
        """The non-streamed answer."""
        ...
