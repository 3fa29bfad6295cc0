"""Rates: what each instance has shown it can do, learned from Ollama's own counters. Pure.

Every final chunk carries ``prompt_eval_count`` (all prompt tokens, cached or not),
``prompt_eval_duration`` (the uncached part only), ``eval_count``/``eval_duration``
and ``load_duration``. From them, per instance and model:

* **prefill** tokens/s, learned only from prompts placement expected to be uncached: a
  cache hit shows as a "rate" far above the real one, and a few of those would make
  every re-prefill look free. A sample more than ``HIT_FACTOR`` times the current
  estimate is taken for an unexpected hit (llama-server's host-RAM cache) and ignored;
* **decode** tokens/s, from every answer long enough to time;
* **load** seconds, from answers whose ``load_duration`` says the model was loaded;

and per model: tokens per byte of the request's prompt (to count a prompt's tokens
before it is sent) and the typical answer length (to tell how long a running answer
still takes). Each figure is the median of its recent samples, so one odd answer moves
nothing. The instances of a group are usually alike (one Mac, one model), and a small
difference between their figures is measurement noise that must not steer requests:
an instance uses the median of all instances' samples unless its own (from at least
``OWN_SAMPLES``) differs from that by more than ``DIFFERENT`` times. Before any answer
at all, ``PRIORS``.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

SAMPLES = 15
HIT_FACTOR = 3.0
# Until the first answers: an M3 Ultra running gpt-oss:20b, roughly (README).
PRIORS = {
    "prefill": 1000.0,
    "decode": 60.0,
    "load": 10.0,
    "tokens_per_byte": 0.25,
    "answer_tokens": 300.0,
}
MIN_PROMPT_TOKENS = 64  # shorter prompts time the overheads more than the prefill
MIN_ANSWER_TOKENS = 8
OWN_SAMPLES = 5
ANSWERS = 50  # answer lengths kept per model: their mean is the typical answer
DIFFERENT = 2.0


def _slide(ordered: list[float], dropped: float | None, value: float) -> float:
    """Keep ``ordered`` sorted as ``value`` comes in and ``dropped`` goes out; its
    median (``statistics.median``'s), read off the middle."""
    if dropped is not None:
        del ordered[bisect.bisect_left(ordered, dropped)]
    bisect.insort(ordered, value)
    n = len(ordered)
    half = n // 2
    return ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2


class Estimate:
    """The median of the last ``SAMPLES`` values (None before the first).

    The values are also kept sorted, one ``insort`` per sample, so the median is known
    at once: placement asks for it on every request, and every small answer brings a
    sample, so a median recomputed on demand (a sort of the window) was computed
    afresh for nearly every request."""

    __slots__ = ("ordered", "samples", "value")

    def __init__(self) -> None:
        self.samples: deque[float] = deque()
        self.ordered: list[float] = []
        self.value: float | None = None

    def add(self, value: float) -> float | None:
        """Take a value; returns the one that dropped out of the window, if any."""
        samples = self.samples
        dropped = samples.popleft() if len(samples) == SAMPLES else None
        samples.append(value)
        self.value = _slide(self.ordered, dropped, value)
        return dropped

    def __len__(self) -> int:
        return len(self.samples)


@dataclass(slots=True)
class Rates:
    """One instance's figures for one model."""

    prefill: Estimate = field(default_factory=Estimate)
    decode: Estimate = field(default_factory=Estimate)
    load: Estimate = field(default_factory=Estimate)


class Sample(NamedTuple):
    """What one finished answer says (durations in seconds; None when absent).

    A NamedTuple, not a frozen dataclass: one is made per exchange, and a frozen
    dataclass sets each field through ``object.__setattr__``."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    answer_tokens: int = 0
    answer_seconds: float = 0.0
    load_seconds: float | None = None

    @classmethod
    def of(cls, counters: dict[str, object]) -> Sample:
        # A JSON number, or 0 for anything else (a string, true, null): type() rather
        # than isinstance, as a bool is an int to isinstance. Written out, and the tuple
        # made directly: this runs for every exchange, and a function per field was
        # most of its cost (callgrind: 12,000 instructions against 7,600).
        get = counters.get
        p, ps, a, s, load = (
            get("prompt_eval_count"),
            get("prompt_eval_duration"),
            get("eval_count"),
            get("eval_duration"),
            get("load_duration"),
        )
        return _new_tuple(
            cls,
            (
                int(p) if type(p) is int or type(p) is float else 0,
                ps / 1e9 if type(ps) is int or type(ps) is float else 0.0,
                int(a) if type(a) is int or type(a) is float else 0,
                s / 1e9 if type(s) is int or type(s) is float else 0.0,
                None
                if load is None
                else load / 1e9
                if type(load) is int or type(load) is float
                else 0.0,
            ),
        )


_new_tuple = tuple.__new__


class Learned:
    """Every instance's rates and every model's token figures."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], Rates] = {}
        self._tokens_per_byte: dict[str, Estimate] = {}
        self._answers: dict[str, deque[int]] = {}
        self._answer_sums: dict[str, int] = {}
        # Every instance's samples of a model, by kind, kept sorted as they come and go
        # (``_add``), and their median: the same for every instance of the model.
        self._everyone: dict[tuple[str, str], list[float]] = {}
        self._pooled: dict[tuple[str, str], float] = {}

    def rates(self, backend: str, model: str) -> Rates:
        found = self._rates.get((backend, model))
        if found is None:
            found = self._rates[backend, model] = Rates()
        return found

    def _add(self, estimate: Estimate, model: str, kind: str, value: float) -> None:
        everyone = self._everyone.get((model, kind))
        if everyone is None:
            everyone = self._everyone[model, kind] = []
        self._pooled[model, kind] = _slide(everyone, estimate.add(value), value)

    def _figure(self, backend: str, model: str, kind: str) -> float:
        pooled = self._pooled.get((model, kind))
        if pooled is None:
            return PRIORS[kind]
        rates = self._rates.get((backend, model))
        if rates is None:
            return pooled
        own: Estimate = getattr(rates, kind)
        mine = own.value if len(own.samples) >= OWN_SAMPLES else None
        if mine is not None and not 1 / DIFFERENT <= mine / pooled <= DIFFERENT:
            return mine  # really another kind of instance (another machine, another GPU)
        return pooled

    def prefill(self, backend: str, model: str) -> float:
        return self._figure(backend, model, "prefill")

    def decode(self, backend: str, model: str) -> float:
        return self._figure(backend, model, "decode")

    def load(self, backend: str, model: str) -> float:
        return self._figure(backend, model, "load")

    def tokens_per_byte(self, model: str) -> float:
        estimate = self._tokens_per_byte.get(model)
        value = estimate.value if estimate is not None else None
        return value if value is not None else PRIORS["tokens_per_byte"]

    def answer_tokens(self, model: str) -> float:
        recent = self._answers.get(model)
        return self._answer_sums[model] / len(recent) if recent else PRIORS["answer_tokens"]

    def learn(
        self,
        backend: str,
        model: str,
        sample: Sample,
        *,
        cold: bool,
        expected_miss: bool,
        prompt_bytes: int,
    ) -> None:
        """Take in one finished answer (see the module docstring for what counts)."""
        rates = self.rates(backend, model)
        if cold and sample.load_seconds is not None:
            self._add(rates.load, model, "load", sample.load_seconds)
        if sample.answer_tokens >= MIN_ANSWER_TOKENS and sample.answer_seconds > 0:
            self._add(rates.decode, model, "decode", sample.answer_tokens / sample.answer_seconds)
        if sample.answer_tokens:
            recent = self._answers.get(model)
            if recent is None:
                recent = self._answers[model] = deque(maxlen=ANSWERS)
            total = self._answer_sums.get(model, 0) + sample.answer_tokens
            if len(recent) == ANSWERS:
                total -= recent[0]  # about to drop out
            recent.append(sample.answer_tokens)
            self._answer_sums[model] = total
        if prompt_bytes and sample.prompt_tokens:
            estimate = self._tokens_per_byte.get(model)
            if estimate is None:
                estimate = self._tokens_per_byte[model] = Estimate()
            estimate.add(sample.prompt_tokens / prompt_bytes)
        if sample.prompt_tokens < MIN_PROMPT_TOKENS or sample.prompt_seconds <= 0:
            return
        apparent = sample.prompt_tokens / sample.prompt_seconds
        current = rates.prefill.value
        unexpected_hit = current is not None and apparent > HIT_FACTOR * current
        if (cold or expected_miss) and not (unexpected_hit and len(rates.prefill) >= 5):
            self._add(rates.prefill, model, "prefill", apparent)

    def table(self) -> list[tuple[str, str, Rates]]:
        """(backend, model, rates) of every pair that has learned something."""
        return [(b, m, r) for (b, m), r in sorted(self._rates.items())]
