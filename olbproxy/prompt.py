"""Prompt: what shapes a request's cached prefix on an Ollama instance. Pure, no I/O.

An instance keeps the KV cache of each slot's last prompt (and, since llama.cpp's
host-RAM prompt cache, of older ones) and reuses the longest common token prefix of
the next prompt. Ollama renders a chat in a fixed order: the runner (the model and the
options that force a reload), the system prompt, the tool list, then the messages one
after another. ``prompt_of`` cuts a request at those boundaries and chains a hash over
them (``Prompt.hashes``): two requests share the prefix up to a boundary exactly when
their chains agree there, whoever sent them. A shared system prompt and tool list (Open
WebUI sends ~25 KB of tools with every chat) is the first boundaries; a conversation's
next turn shares every boundary of the previous turn's prompt. An absent system prompt
or tool list makes no boundary of its own (its mark goes into the next one).

The hashes are over the parsed request (``json.loads`` of the bytes as received), in
canonical JSON: key order and whitespace of the client's JSON do not matter, values
do. What Ollama leaves out of a rendered prompt is left out here too (``thinking`` of
earlier turns, tool-call ids). One pass of C-speed ``orjson.dumps`` and blake2b over the
body: a 4 MiB conversation costs a few milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from olbproxy.body import NUMBER

# Options that make Ollama load a new runner when they differ from the loaded one's
# (api.Runner): a request that changes them reloads the model under everyone else.
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")

# Endpoints whose prompt is a chat (messages rendered by the model's template).
CHATS = frozenset({"/api/chat", "/v1/chat/completions", "/v1/messages", "/v1/responses"})
COMPLETIONS = frozenset({"/api/generate", "/v1/completions"})

_SYSTEM_ROLES = frozenset({"system", "developer"})


def _dump(value: Any) -> bytes:
    # Sorted keys: Go renders maps (tool-call arguments) in key order, so a client's key
    # order never reaches the prompt. orjson is several times faster than json.dumps;
    # what it cannot encode (integers past 64 bits) takes the slow road, the same one
    # every time for the same value.
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
            "utf-8", "surrogatepass"
        )


def _text(value: Any) -> bytes:
    # Strings (almost all of a body) skip the JSON encoder: a length prefix frames them.
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"s%d:%b" % (len(data), data)
    return b"j" + _dump(value) if value is not None else b"n"


def _message(message: Any) -> bytes:
    # Bodies come from JSON, so a mapping in them is a dict: isinstance(x, dict) is one C
    # check where isinstance(x, Mapping) goes through the ABC machinery on every message.
    if not isinstance(message, dict):
        return _text(message)
    head = str(message.get("role") or "").lower().encode() + b"\x00" + _text(message.get("content"))
    calls = message.get("tool_calls")
    images = message.get("images")
    name = message.get("tool_name") or message.get("name")
    if calls is None and images is None and name is None:
        return head
    if isinstance(calls, list):
        # Ids and indexes are the client's bookkeeping; name and arguments are rendered.
        calls = [
            (f.get("name"), f.get("arguments"))
            if isinstance(f := (c.get("function") if isinstance(c, dict) else None), dict)
            else c
            for c in calls
        ]
    return head + _text(calls) + _text(images) + _text(name)


def runner_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's options that decide which runner serves it."""
    options = body.get("options")
    if not isinstance(options, dict):
        return {}
    return {k: options[k] for k in RUNNER_OPTIONS if k in options}


@dataclass(frozen=True, slots=True)
class Prompt:
    """A request's prompt cut at its boundaries: chained hashes and cumulative sizes."""

    hashes: tuple[bytes, ...]  # chain value after each boundary; [0] is the runner
    sizes: tuple[int, ...]  # bytes of canonical JSON up to and including each boundary
    # Index into ``hashes`` of the whole prompt of the exchange this request continues
    # (the boundary before its last assistant message); None for a first turn.
    continues: int | None = None
    answer_tokens: int | None = None  # the request's own limit (num_predict, max_tokens)

    @property
    def key(self) -> bytes:
        """The exchange key: the whole prompt. The next turn continues from here."""
        return self.hashes[-1]

    @property
    def size(self) -> int:
        return self.sizes[-1]

    @property
    def continued(self) -> bytes | None:
        return None if self.continues is None else self.hashes[self.continues]


# What an absent field is framed as (``_text(None)``).
_ABSENT = b"n"


class _Chain:
    __slots__ = ("hashes", "held", "size", "sizes", "value")

    def __init__(self) -> None:
        self.value = b""
        self.size = 0
        self.held = b""
        self.hashes: list[bytes] = []
        self.sizes: list[int] = []

    def add(self, piece: bytes) -> None:
        """A boundary after ``piece`` (and whatever was held)."""
        piece, self.held = self.held + piece, b""
        digest = hashlib.blake2b(self.value, digest_size=16)
        digest.update(piece)
        self.value = digest.digest()
        self.size += len(piece)
        self.hashes.append(self.value)
        self.sizes.append(self.size)

    def add_or_hold(self, piece: bytes) -> None:
        """A boundary after ``piece``, unless it frames only absent fields: then it goes
        into the next boundary. Most requests have no system prompt or no tools, and a
        boundary there would be one more hash to make, record and look up on every
        request (placement was a quarter of a small request's instructions) for a prefix
        no instance could hold more of than any other."""
        if piece.strip(_ABSENT):
            self.add(piece)
        else:
            self.held += piece


def _limit(body: Mapping[str, Any]) -> int | None:
    options = body.get("options")
    candidates = [
        options.get("num_predict") if isinstance(options, dict) else None,
        body.get("max_tokens"),
        body.get("max_completion_tokens"),
        body.get("max_output_tokens"),
    ]
    for value in candidates:
        if isinstance(value, NUMBER) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def prompt_of(endpoint: str, model: str, body: Mapping[str, Any]) -> Prompt | None:
    """The prompt of a model request, or None when it has none worth placing by (embeddings)."""
    chat = endpoint in CHATS
    if not chat and endpoint not in COMPLETIONS:
        return None
    chain = _Chain()
    think = body.get("think", body.get("reasoning_effort"))
    chain.add(_dump(["chat" if chat else "generate", model, runner_options(body), think]))
    system = body.get("system", body.get("instructions"))
    messages: Sequence[Any] = ()
    if chat:
        raw = body.get("messages", body.get("input"))
        if isinstance(raw, str):
            messages = [{"role": "user", "content": raw}]
        elif isinstance(raw, list):
            messages = raw
        # Leading system messages are rendered before the tools, like a system field.
        lead = 0
        while (
            lead < len(messages)
            and isinstance(messages[lead], dict)
            and str(messages[lead].get("role") or "").lower() in _SYSTEM_ROLES
        ):
            lead += 1
        chain.add_or_hold(_text(system) + b"".join(_message(m) for m in messages[:lead]))
        messages = messages[lead:]
        chain.add_or_hold(_text(body.get("tools")))
    else:
        chain.add_or_hold(_text(system) + _text(body.get("raw")) + _text(body.get("template")))
        chain.add_or_hold(_text(body.get("context")))
    continues: int | None = None
    offset = len(chain.hashes)
    if chat:
        for index, message in enumerate(messages):
            if isinstance(message, dict) and str(message.get("role")).lower() == "assistant":
                continues = offset + index - 1
            chain.add(_message(message))
    else:
        chain.add(_text(body.get("prompt")) + _text(body.get("suffix")))
    if chain.held:
        chain.add(b"")  # a chat without messages ends where its held parts end
    return Prompt(tuple(chain.hashes), tuple(chain.sizes), continues, _limit(body))
