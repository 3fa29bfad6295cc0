"""The Markdown table and the JSON lines of a run (``bench/results/``, git-ignored).

One row per scenario, one column per target. Ratios compare a target with the
reference of that row measured in the same run: ``direct`` for delivered tokens, time
to first token and gaps; ``minimal`` for CPU per token and non-streaming requests/s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.goals import Results, Verdict
from bench.profiles import Profile, breakdown, top
from bench.scenarios import Measurement, Scenario

Cell = Callable[[Measurement, Results], str]


def _ratio(value: float, reference: float | None) -> str:
    return f" ({value / reference:.2f}x)" if reference else ""


def _reference(results: Results, m: Measurement, target: str) -> Measurement | None:
    found = results.get((m.scenario, target))
    if found is None or found.skipped is not None or found is m:
        return None
    return found


def _errors(m: Measurement) -> str:
    return f", **{m.errors} errors**" if m.errors else ""


def tokens_cell(m: Measurement, results: Results) -> str:
    direct = _reference(results, m, "direct")
    reference = direct.tokens_per_s if direct else None
    return f"{m.tokens_per_s:,.0f}{_ratio(m.tokens_per_s, reference)}{_errors(m)}"


def cpu_cell(m: Measurement, results: Results) -> str:
    if m.cpu_us_per_token is None:
        return "—"
    minimal = _reference(results, m, "minimal")
    reference = minimal.cpu_us_per_token if minimal else None
    return f"{m.cpu_us_per_token:.1f} µs{_ratio(m.cpu_us_per_token, reference)}"


def _added(value: float, reference: float | None) -> str:
    return f" ({value - reference:+.2f})" if reference is not None else ""


def ttft_cell(m: Measurement, results: Results) -> str:
    if "p50" not in m.ttft_ms:
        return "—"
    direct = _reference(results, m, "direct")
    p50, p99 = m.ttft_ms["p50"], m.ttft_ms["p99"]
    return (
        f"{p50:.2f}{_added(p50, direct.ttft_ms.get('p50') if direct else None)} / "
        f"{p99:.2f}{_added(p99, direct.ttft_ms.get('p99') if direct else None)}{_errors(m)}"
    )


def gap_cell(m: Measurement, results: Results) -> str:
    if "p99" not in m.gap_ms:
        return "—"
    direct = _reference(results, m, "direct")
    p99 = m.gap_ms["p99"]
    return f"{p99:.1f}{_added(p99, direct.gap_ms.get('p99') if direct else None)}{_errors(m)}"


def whole_cell(m: Measurement, results: Results) -> str:
    minimal = _reference(results, m, "minimal")
    reference = minimal.answers_per_s if minimal else None
    return f"{m.answers_per_s:,.0f}{_ratio(m.answers_per_s, reference)}{_errors(m)}"


def request_cpu_cell(m: Measurement, results: Results) -> str:
    if m.cpu_us_per_answer is None:
        return "—"
    minimal = _reference(results, m, "minimal")
    reference = minimal.cpu_us_per_answer if minimal else None
    return f"{m.cpu_us_per_answer:.0f} µs{_ratio(m.cpu_us_per_answer, reference)}"


def memory_cell(m: Measurement, results: Results) -> str:
    if m.rss_per_stream_kib is None:
        return "—"
    return f"{m.rss_per_stream_kib:.1f} KiB{_errors(m)}"


def cores_cell(m: Measurement, results: Results) -> str:
    target = m.cores.get("target")
    if m.target == "direct" or target is None:
        return f"sims {m.cores.get('backends', 0):.2f}"
    return f"{target:.2f} (sims {m.cores.get('backends', 0):.2f})"


# (scenario key, what the row shows, how a cell is written)
ROWS: tuple[tuple[str, str, Cell], ...] = (
    ("a100", "tokens/s (x direct)", tokens_cell),
    ("a1000", "tokens/s (x direct)", tokens_cell),
    ("a2000", "tokens/s (x direct)", tokens_cell),
    ("a100", "(b) CPU per token (x minimal)", cpu_cell),
    ("a1000", "(b) CPU per token (x minimal)", cpu_cell),
    ("a1000", "cores used by target (sims)", cores_cell),
    ("ttft", "p50 / p99 ms (+ over direct)", ttft_cell),
    ("gaps", "p99 ms (+ over direct)", gap_cell),
    ("whole", "requests/s (x minimal)", whole_cell),
    ("whole", "CPU per request (x minimal)", request_cpu_cell),
    ("whole2", "requests/s (x minimal)", whole_cell),
    ("whole3", "requests/s (x minimal)", whole_cell),
    ("idle", "RSS per idle stream", memory_cell),
)


def table(scenarios: Sequence[Scenario], targets: Sequence[str], results: Results) -> list[str]:
    titles = {s.key: s.title for s in scenarios}
    lines = [
        "| scenario | metric | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for key, metric, cell in ROWS:
        if key not in titles:
            continue
        cells = []
        for target in targets:
            m = results.get((key, target))
            if m is None:
                cells.append("—")
            elif m.skipped is not None:
                cells.append("skipped")
            else:
                cells.append(cell(m, results))
        title = titles[key] if cell is not cpu_cell else f"(b) at {titles[key][4:]}"
        lines.append(f"| {title} | {metric} | " + " | ".join(cells) + " |")
    return lines


def notes(results: Results) -> list[str]:
    lines = []
    for (scenario, target), m in results.items():
        if m.skipped is not None:
            lines.append(f"- {scenario} / {target}: skipped: {m.skipped}")
        for note in m.notes:
            lines.append(f"- {scenario} / {target}: {note}")
    return lines


def persistence_lines(results: Results) -> list[str]:
    """The proxy's persistence after each load: the backlog when it stopped, how long it
    took to reach MongoDB, and the exchanges recorded against the messages written."""
    rows = [(key, m.persistence) for (key, target), m in results.items() if m.persistence]
    if not rows:
        return []
    lines = [
        "| scenario | backlog at the end: queue | spool | drained in (s) | exchanges recorded "
        "| messages written |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, state in rows:
        cells = [
            f"{state[k]:,.0f}" if k in state else "—"
            for k in ("queue", "spool", "drain_s", "recorded", "written")
        ]
        if state.get("drained") == 0.0:
            cells[2] = f"not in {cells[2]}"
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def stall_lines(results: Results) -> list[str]:
    """olbproxy's own stalls in each window: loop lag and garbage collection."""
    rows = [(key, t, m.stalls) for (key, t), m in results.items() if m.stalls]
    if not rows:
        return []
    lines = [
        "| scenario | target | loop lag p50 / p99 / max (ms, bucket bounds) | GC pauses "
        "(count, ms in all) |",
        "|---|---|---|---|",
    ]
    for key, target, s in rows:
        lag = "/".join(
            f"{s[k]:g}" if k in s else "—" for k in ("lag_p50_ms", "lag_p99_ms", "lag_max_le_ms")
        )
        gc = f"{s.get('gc_pauses', 0):,.0f}, {s.get('gc_pause_ms', 0):,.1f}"
        lines.append(f"| {key} | {target} | ≤ {lag} | {gc} |")
    return lines


def verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    lines = ["| goal | measured | result |", "|---|---|---|"]
    for v in verdicts:
        result = "not measured" if v.passed is None else ("pass" if v.passed else "**MISS**")
        lines.append(f"| {v.goal} | {v.value} | {result} |")
    return lines


def markdown(
    header: Mapping[str, Any],
    scenarios: Sequence[Scenario],
    targets: Sequence[str],
    results: Results,
    verdicts: Sequence[Verdict] | None,
) -> str:
    parts = [
        f"Run {header['started']} on {header['machine']}, {header['wall_seconds']:.0f} s: "
        f"`{header['command']}`",
        "",
        *(table(scenarios, targets, results) if scenarios else []),
        "",
    ]
    setup = [f"- {name}: {text}" for name, text in header.get("setup", {}).items()]
    if setup:
        parts += ["Set-up:", "", *setup, ""]
    persisted = persistence_lines(results)
    if persisted:
        parts += [
            "Persistence of the proxy (a backlog means the recorder fell behind; the bench "
            "then waits for it to drain and counts what MongoDB holds):",
            "",
        ]
        parts += [*persisted, ""]
    stalls = stall_lines(results)
    if stalls:
        parts += ["The proxy's own stalls in each window (/metrics):", "", *stalls, ""]
    found = notes(results)
    if found:
        parts += ["Notes (bottlenecks, errors, skips):", "", *found, ""]
    if verdicts is not None:
        parts += ["Goals (issues 7, 12 and 16):", "", *verdict_lines(verdicts), ""]
    return "\n".join(parts)


def profile_sections(results: Results) -> str:
    """``--profile``: per scenario, where the CPU of each profiled target goes."""
    by_scenario: dict[str, list[Measurement]] = {}
    for m in results.values():
        if m.profile and Path(m.profile).is_file():
            by_scenario.setdefault(m.scenario, []).append(m)
    parts: list[str] = []
    for scenario, measured in by_scenario.items():
        unit = "request" if scenario.startswith("whole") else "token"
        loaded: dict[str, tuple[Profile, float]] = {}
        for m in measured:
            cost = m.cpu_us_per_answer if unit == "request" else m.cpu_us_per_token
            loaded[m.target] = (Profile.load(Path(m.profile or "")), cost or 0.0)
        parts += ["", f"Profile, {measured[0].title} (py-spy --gil; CPU from /proc):", ""]
        parts += breakdown(loaded, unit)
        for m in measured:
            profile, cost = loaded[m.target]
            parts += ["", f"{m.target} ({m.profile}):", "", *top(profile, cost, unit)]
    return "\n".join(parts) + ("\n" if parts else "")


def write(
    directory: Path,
    header: Mapping[str, Any],
    measurements: Sequence[Measurement],
    verdicts: Sequence[Verdict] | None,
    text: str,
    extra: Sequence[Mapping[str, Any]] = (),
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = str(header["started"]).replace(":", "").replace("-", "").replace("T", "-")[:15]
    jsonl, md = directory / f"{stamp}.jsonl", directory / f"{stamp}.md"
    with jsonl.open("w") as out:
        out.write(json.dumps({"type": "run", **header}) + "\n")
        for m in measurements:
            out.write(json.dumps({"type": "measurement", **asdict(m)}) + "\n")
        for v in verdicts or ():
            out.write(json.dumps({"type": "goal", **asdict(v)}) + "\n")
        for record in extra:
            out.write(json.dumps(record) + "\n")
    md.write_text(text + "\n")
    (directory / "latest.md").write_text(text + "\n")
    return jsonl, md
