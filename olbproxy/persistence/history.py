"""History: what one request says about the room it belongs to. Pure, no I/O.

Ollama clients resend the whole history with every turn, so the history itself tells
which earlier turn a request continues. Each message is reduced to a canonical form
that survives a round trip through any client we know (``canonical``) and the forms of
the newest WINDOW messages are hashed together with sha256 (``History``): the hash of
``messages[:-1]`` of a new request equals the hash a previous turn stored for
``messages + [answer]``.

The canonical form keeps role, text and tool calls (name and parsed arguments) only:

* ``thinking`` is dropped: Open WebUI and most clients do not send it back;
* text is NFC-normalised and stripped: front-ends trim what they show and resend;
* images are left out: clients re-encode or drop them on later turns, and the text
  around them identifies the conversation well enough for one user;
* tool-call ids and indexes are left out (clients renumber them); arguments are
  compared as JSON values, whether a client sends them as an object (Ollama) or as a
  JSON string (OpenAI);
* ``system``/``developer`` messages are skipped: front-ends rewrite them between turns
  (the date, memories, retrieved documents) while the conversation stays the same.

Also here: the new input of a request, Open WebUI's background tasks, room titles.
"""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHAT_ENDPOINTS = frozenset({"/api/chat", "/v1/chat/completions"})
GENERATE = "/api/generate"
RECORDED = CHAT_ENDPOINTS | {GENERATE}

_THREADED_ROLES = frozenset({"user", "assistant", "tool"})
# Older turns a request may continue: the newest prefixes ending in an answer, among the
# newest SPAN threaded messages.
MAX_CANDIDATES = 8
SPAN = 64
# Threaded messages one history hash covers (see ``history``).
WINDOW = 256

# Open WebUI's task prompts (title, tags, follow-ups, search queries, autocompletion,
# emoji, image prompt: backend/open_webui/config.py DEFAULT_*_PROMPT_TEMPLATE) all
# begin with this line; its first words name the task. Checked in this order, because
# the title prompt also mentions an emoji.
TASK_MARKER = "### Task:"
_TASKS = (
    ("title", "title"),
    ("follow_up", "follow-up"),
    ("tags", "tags"),
    ("queries", "queries"),
    ("autocomplete", "autocompletion"),
    ("image_prompt", "image"),
    ("emoji", "emoji"),
    ("tools", "tool"),
)

TITLE_LENGTH = 60


def text_of(content: Any) -> str:
    """A message's text: Ollama's string, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (
            part.get("text")
            for part in content
            if isinstance(part, Mapping) and part.get("type") in ("text", "input_text")
        )
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return {} if value is None else value


def canonical_tool_calls(calls: Any) -> list[list[Any]]:
    """[name, arguments] per call, whatever the client's shape (Ollama or OpenAI)."""
    out: list[list[Any]] = []
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        spec = function if isinstance(function, Mapping) else call
        out.append([str(spec.get("name") or ""), _arguments(spec.get("arguments"))])
    return out


def canonical(message: Mapping[str, Any]) -> str:
    role = str(message.get("role") or "").lower()
    text = unicodedata.normalize("NFC", text_of(message.get("content"))).strip()
    calls = canonical_tool_calls(message.get("tool_calls"))
    form = [role, text, calls]
    return json.dumps(form, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class History:
    """The hashes of one request's history."""

    head: str  # the hash of the whole history: the answer is chained onto it
    prefix: str | None  # the hash of messages[:-1]; None on a first turn
    # Hashes of prefixes ending in an assistant message, longest first: the turns this
    # request may continue.
    candidates: tuple[str, ...]
    # Canonical forms of the last WINDOW - 1 threaded messages, for ``answered``.
    tail: tuple[str, ...] = ()


def window_hash(forms: Sequence[str]) -> str:
    """One sha256 over the canonical forms of a window of messages, in order."""
    return hashlib.sha256("\n".join(forms).encode()).hexdigest()


def history(messages: Sequence[Any]) -> History:
    """The history hashes, from at most the last WINDOW + SPAN messages that count.

    A hash covers the last WINDOW threaded messages before its point (all of them in a
    shorter history). Two histories that end alike over that many messages are one room
    to us: that bounds the work per exchange (a chat of 100,000 messages costs what one
    of 300 does) at a risk no real conversation runs.
    """
    # Walk back from the end: the newest WINDOW + SPAN threaded messages, newest first.
    recent: list[tuple[int, str, str]] = []  # (index, role, canonical form)
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role") or "").lower()
        if role in _THREADED_ROLES:
            recent.append((index, role, canonical(message)))
            if len(recent) == WINDOW + SPAN:
                break
    recent.reverse()
    forms = [form for _index, _role, form in recent]
    last = len(messages) - 1

    def ending_at(position: int) -> str:  # the hash over forms[: position + 1]
        return window_hash(forms[max(0, position + 1 - WINDOW) : position + 1])

    head = ending_at(len(forms) - 1) if forms else ""
    # messages[:-1]: every threaded message but the last one, when it is the last message.
    before_last = len(forms) - 1 if recent and recent[-1][0] == last else len(forms)
    prefix = ending_at(before_last - 1) if before_last > 0 else None
    candidates: list[str] = []
    for position in range(before_last - 1, max(-1, len(forms) - 1 - SPAN), -1):
        _index, role, _form = recent[position]
        if role == "assistant" and recent[position][0] < last:
            candidates.append(ending_at(position))
            if len(candidates) == MAX_CANDIDATES:
                break
    return History(head, prefix, tuple(candidates), tuple(forms[-(WINDOW - 1) :]))


def answered(hashes: History, content: str, tool_calls: list[Any]) -> str:
    """The history hash once the answer is part of it: what the next turn continues."""
    form = canonical({"role": "assistant", "content": content, "tool_calls": tool_calls})
    return window_hash([*hashes.tail, form])


def context_hash(context: Any) -> str | None:
    """/api/generate's ``context`` (token ids the client sends back to continue)."""
    if not isinstance(context, list) or not context:
        return None
    return hashlib.sha256(("context\n" + json.dumps(context)).encode()).hexdigest()


def new_input(endpoint: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """(role, text) of what this request adds: the last message, or the prompt."""
    if endpoint == GENERATE:
        prompt = body.get("prompt")
        return "user", prompt if isinstance(prompt, str) else ""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], Mapping):
        last = messages[-1]
        return str(last.get("role") or "user").lower(), text_of(last.get("content"))
    return "user", ""


def image_refs(endpoint: str, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The images the new input carries, as references (digest and size): never the
    base64 itself, which would make every turn with a photo megabytes of database."""
    if endpoint == GENERATE:
        images: Any = body.get("images")
    else:
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not isinstance(last, Mapping):
            return []
        images = list(last.get("images") or [])
        content = last.get("content")
        for part in content if isinstance(content, list) else ():
            url = part.get("image_url") if isinstance(part, Mapping) else None
            url = url.get("url") if isinstance(url, Mapping) else url
            if isinstance(url, str) and url.startswith("data:"):
                images.append(url.partition(",")[2])
    refs = []
    for image in images if isinstance(images, list) else ():
        if not isinstance(image, str):
            continue
        try:
            data = base64.b64decode(image, validate=False)
        except ValueError:
            data = image.encode()
        refs.append({"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)})
    return refs


def first_user_text(endpoint: str, body: Mapping[str, Any]) -> str:
    """What a new room is titled from: the conversation's first user message."""
    if endpoint == GENERATE:
        return new_input(endpoint, body)[1]
    for message in body.get("messages") or ():
        if isinstance(message, Mapping) and str(message.get("role") or "").lower() == "user":
            return text_of(message.get("content"))
    return ""


def task_of(endpoint: str, body: Mapping[str, Any], *, stream: bool) -> str | None:
    """The kind of Open WebUI background task this request is, or None for a real turn.

    Open WebUI asks for titles, tags and follow-ups with non-streaming chats whose
    last user message is one of its task prompts.
    """
    if stream or endpoint not in CHAT_ENDPOINTS:
        return None
    role, text = new_input(endpoint, body)
    text = text.lstrip()
    if role != "user" or not text.startswith(TASK_MARKER):
        return None
    opening = text[len(TASK_MARKER) :].lstrip().split("\n", 1)[0].lower()
    return next((task for task, word in _TASKS if word in opening), "other")


def title_of(text: str, limit: int = TITLE_LENGTH) -> str:
    """A room title from a message: one line, at most ``limit`` characters."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def merge_tool_calls(calls: list[Any]) -> list[Any]:
    """OpenAI streams may split one tool call over several deltas (same ``index``, the
    arguments string in pieces); put each call back together. Ollama's calls come whole."""
    merged: list[Any] = []
    by_index: dict[int, dict[str, Any]] = {}
    for call in calls:
        index = call.get("index") if isinstance(call, Mapping) else None
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(index, int) or not isinstance(function, Mapping):
            merged.append(call)
            continue
        whole = by_index.get(index)
        pieces = function.get("arguments")
        if whole is None or (call.get("id") and call.get("id") != whole.get("id")):
            whole = {**call, "function": dict(function)}
            by_index[index] = whole
            merged.append(whole)
        elif isinstance(pieces, str):
            before = whole["function"].get("arguments") or ""
            whole["function"]["arguments"] = f"{before}{pieces}"
    return merged
