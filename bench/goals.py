"""The targets of issue 7, checked against one run (``--check``).

Every ratio compares two targets measured in the same run on the same machine. A goal
whose measurements are missing (a target skipped, a scenario left out with ``--only``)
is reported as not measured, never as passed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bench.scenarios import WHOLE_ROUNDS, Measurement

Results = Mapping[tuple[str, str], Measurement]  # (scenario, target) -> measurement


@dataclass(frozen=True)
class Verdict:
    goal: str
    value: str  # what was measured, in words
    passed: bool | None  # None: not measured


def _get(results: Results, scenario: str, target: str) -> Measurement | None:
    found = results.get((scenario, target))
    return found if found is not None and found.skipped is None else None


def _streaming(scenario: str, ratio: float, label: str) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        goal = f"{label}: proxy >= {ratio:g} x direct tokens/s, zero errors"
        proxy, direct = _get(results, scenario, "proxy"), _get(results, scenario, "direct")
        if proxy is None or direct is None or not direct.tokens_per_s:
            return Verdict(goal, "not measured", None)
        got = proxy.tokens_per_s / direct.tokens_per_s
        value = f"{got:.3f} x direct ({proxy.tokens_per_s:,.0f} / {direct.tokens_per_s:,.0f})"
        if proxy.errors:
            value += f", {proxy.errors} errors"
        return Verdict(goal, value, got >= ratio and proxy.errors == 0)

    return check


def _cpu(reference: str, limit: float) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        goal = f"(b) CPU per forwarded token: proxy <= {limit:g} x {reference}"
        proxy, other = _get(results, "a1000", "proxy"), _get(results, "a1000", reference)
        if (
            proxy is None
            or other is None
            or proxy.cpu_us_per_token is None
            or not other.cpu_us_per_token
        ):
            return Verdict(goal, "not measured", None)
        got = proxy.cpu_us_per_token / other.cpu_us_per_token
        value = (
            f"{got:.2f} x {reference} ({proxy.cpu_us_per_token:.1f} / "
            f"{other.cpu_us_per_token:.1f} µs)"
        )
        return Verdict(goal, value, got <= limit)

    return check


def _ttft(percentile: str, limit_ms: float) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        goal = f"(c) TTFT at 200 streams/s: added {percentile} <= {limit_ms:g} ms over direct"
        proxy, direct = _get(results, "ttft", "proxy"), _get(results, "ttft", "direct")
        if proxy is None or direct is None or percentile not in proxy.ttft_ms:
            return Verdict(goal, "not measured", None)
        added = proxy.ttft_ms[percentile] - direct.ttft_ms.get(percentile, 0.0)
        return Verdict(goal, f"{added:+.2f} ms", added <= limit_ms)

    return check


def _gaps(results: Results) -> Verdict:
    goal = "(d) inter-token gap p99 at 500 streams <= direct + 3 ms"
    proxy, direct = _get(results, "gaps", "proxy"), _get(results, "gaps", "direct")
    if proxy is None or direct is None or "p99" not in proxy.gap_ms:
        return Verdict(goal, "not measured", None)
    added = proxy.gap_ms["p99"] - direct.gap_ms.get("p99", 0.0)
    value = f"{proxy.gap_ms['p99']:.1f} ms vs {direct.gap_ms.get('p99', 0.0):.1f} ms ({added:+.1f})"
    return Verdict(goal, value, added <= 3.0)


def _whole(results: Results) -> Verdict:
    """Judged on the median of the rounds' ratios (scenarios.WHOLE_ROUNDS): one round
    alone moved between 0.6 and 1.2 x on a shared host."""
    goal = "(e) non-streaming requests/s at 64 connections >= 0.8 x minimal (JWT on)"
    ratios: list[float] = []
    shown: list[str] = []
    errors = 0
    for key, _ in WHOLE_ROUNDS:
        proxy, minimal = _get(results, key, "proxy"), _get(results, key, "minimal")
        if proxy is None or minimal is None or not minimal.answers_per_s:
            continue
        ratios.append(proxy.answers_per_s / minimal.answers_per_s)
        shown.append(f"{proxy.answers_per_s:,.0f} / {minimal.answers_per_s:,.0f}")
        errors += proxy.errors
    if not ratios:
        return Verdict(goal, "not measured", None)
    got = statistics.median(ratios)
    value = f"{got:.2f} x minimal"
    if len(ratios) > 1:
        rounds = ", ".join(f"{r:.2f}" for r in ratios)
        value += f", median of {len(ratios)} rounds ({rounds}: {'; '.join(shown)})"
    else:
        value += f" ({shown[0]})"
    if errors:
        value += f", {errors} errors"
    return Verdict(goal, value, got >= 0.8 and errors == 0)


def _memory(results: Results) -> Verdict:
    goal = "(f) proxy memory per open idle stream at 2000 streams <= 30 KiB"
    proxy = _get(results, "idle", "proxy")
    if proxy is None or proxy.rss_per_stream_kib is None:
        return Verdict(goal, "not measured", None)
    value = f"{proxy.rss_per_stream_kib:.1f} KiB ({proxy.opened} streams)"
    return Verdict(goal, value, proxy.rss_per_stream_kib <= 30.0)


def _ttft_ratio(percentile: str, limit: float) -> Callable[[Results], Verdict]:
    """Issue 16's form of (c), which holds on a slower or busier machine too."""

    def check(results: Results) -> Verdict:
        goal = f"(c') TTFT at 200 streams/s: added {percentile} <= {limit:g} x what minimal adds"
        proxy, minimal, direct = (_get(results, "ttft", t) for t in ("proxy", "minimal", "direct"))
        if proxy is None or minimal is None or direct is None or percentile not in proxy.ttft_ms:
            return Verdict(goal, "not measured", None)
        base = direct.ttft_ms.get(percentile, 0.0)
        ours = proxy.ttft_ms[percentile] - base
        theirs = minimal.ttft_ms.get(percentile, 0.0) - base
        value = f"{ours:+.2f} ms vs minimal {theirs:+.2f} ms"
        return Verdict(goal, value, ours <= limit * max(theirs, 0.1))

    return check


def _drained(results: Results) -> Verdict:
    goal = "every exchange the proxy recorded is in MongoDB after the drain"
    states = [m.persistence for (_, t), m in results.items() if t == "proxy" and m.persistence]
    if not states:
        return Verdict(goal, "not measured", None)
    recorded = sum(s.get("recorded", 0.0) for s in states)
    written = sum(s.get("written", 0.0) for s in states)
    drained = all(s.get("drained", 1.0) for s in states)
    slowest = max(s.get("drain_s", 0.0) for s in states)
    value = f"{written:,.0f} of {recorded:,.0f} written; slowest drain {slowest:.1f} s"
    return Verdict(goal, value, drained and written >= recorded)


GOALS: tuple[Callable[[Results], Verdict], ...] = (
    _streaming("a1000", 0.95, "(a) 1000 x 40 tok/s"),
    _streaming("a2000", 0.90, "(a) 2000 x 20 tok/s"),
    _cpu("minimal", 1.25),
    _cpu("nginx", 2.0),
    _ttft("p50", 1.0),
    _ttft("p99", 2.0),
    _ttft_ratio("p50", 1.5),
    _ttft_ratio("p99", 1.5),
    _gaps,
    _whole,
    _memory,
    _drained,
)


def check(results: Results) -> list[Verdict]:
    return [goal(results) for goal in GOALS]
