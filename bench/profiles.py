"""``--profile``: py-spy samples the Python targets during each streaming window.

``py-spy record --gil --format raw`` samples the thread that holds the GIL and writes
collapsed stacks (``frame;frame;... count``), the input of flamegraph.pl and speedscope.
uvloop releases the GIL while it waits in epoll, so idle time is left out; a sample's
innermost Python frame includes the C code it called (a socket write shows as aiohttp's
``_writelines``). Shares of the samples are turned into µs per token (or request) by
the target's CPU time from /proc in the same window, so the rows add up to the measured
cost; libuv's own work outside the GIL (socket reads) is spread over them. Sampling
costs the target some CPU (py-spy pauses it for each sample; ``--nonblocking`` would
not, but then a tenth to a quarter of the stacks come out torn): the figures of a
profiled run are not for comparison.
py-spy is not a dependency of the bench: ``pip install py-spy`` (root, or ptrace
permission) to use it.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Child

RATE = 250  # samples per second
_LINE = re.compile(r" \(([^)]*?)(?::\d+)?\)$")

# Where a token's CPU goes, by the innermost Python frame of each sample (aiohttp 3.x).
_WRITE = {
    "StreamResponse.write",
    "StreamWriter.write",
    "StreamWriter._write",
    "StreamWriter._writelines",
    "StreamWriter._write_chunked_payload",
    "StreamWriter.write_eof",
}
_READ = ("StreamReader.", "ResponseHandler.", "AsyncStreamIterator.", "set_result (")
CATEGORIES = (
    "write to the client: chunk framing, send()",
    "read from the backend: protocol callbacks, parser, StreamReader",
    "the relay loop's own lines",
    "event loop: uvloop dispatching callbacks and tasks",
    "persistence: recorder (parse, build, write to MongoDB)",
    "everything else: per-request work, timers, metrics, auth",
)


def category(stack: list[str]) -> str:
    leaf = stack[-1]
    if any(name.startswith(("Recorder.", "AsyncMongoClient", "PyMongo")) for name in stack):
        return CATEGORIES[4]
    if leaf.split(" (")[0] in _WRITE:
        return CATEGORIES[0]
    if leaf.startswith(_READ):
        return CATEGORIES[1]
    if leaf.startswith(("Relay._copy (", "relay (bench/minimal.py)")):
        return CATEGORIES[2]
    if leaf.startswith("Runner.run ("):
        return CATEGORIES[3]
    return CATEGORIES[5]


def binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path, log_dir: Path) -> Child | None:
    """Start sampling ``pid`` for ``seconds`` into ``output``; None without py-spy."""
    spy = binary()
    if spy is None:
        return None
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "--gil",
        "--output",
        str(output),
    ]
    return Child(f"py-spy-{output.stem}", argv, log_dir)


def _function(frame: str) -> str:
    """``write (aiohttp/http_writer.py:93)`` -> ``write (aiohttp/http_writer.py)``."""
    frame = frame.strip()
    match = _LINE.search(frame)
    if match is None:
        return frame
    path = match.group(1)
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{frame[: match.start()]} ({path})"


@dataclass
class Profile:
    """Samples by innermost function, by any function on the stack, and by category."""

    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    total: int = 0
    outer: set[str] = field(default_factory=set)  # the event loop and the frames above it

    @classmethod
    def load(cls, raw: Path) -> Profile:
        profile = cls()
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [_function(f) for f in stack.split(";") if f.strip()]
            if not frames or not count.isdigit():
                continue
            samples = int(count)
            profile.total += samples
            profile.own[frames[-1]] += samples
            profile.categories[category(frames)] += samples
            for name in set(frames):
                profile.inclusive[name] += samples
            loop = next((i for i, f in enumerate(frames) if f.startswith("Runner.run (")), -1)
            profile.outer.update(frames[: loop + 1])
        return profile


def breakdown(profiles: Mapping[str, tuple[Profile, float]], unit: str) -> list[str]:
    """A Markdown table: µs per unit by category, one column per target."""
    names = list(profiles)
    lines = [
        f"| µs per {unit} | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for name in CATEGORIES:
        cells = [
            f"{p.categories[name] / p.total * cost:.1f}" if p.total else "—"
            for p, cost in profiles.values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **CPU (/proc)** | " + " | ".join(f"**{c:.1f}**" for _, c in profiles.values()))
    lines[-1] += " |"
    return lines


def top(profile: Profile, cost: float, unit: str, count: int = 12) -> list[str]:
    """The costliest functions by self time and by inclusive time, as Markdown lines."""
    if not profile.total:
        return ["(no samples)"]

    def row(name: str, n: int) -> str:
        return (
            f"- {n / profile.total * cost:6.2f} µs/{unit} {100 * n / profile.total:5.1f}%  {name}"
        )

    # The frames every sample passes through (runpy, main, the loop) say nothing.
    deeper = Counter({k: v for k, v in profile.inclusive.items() if k not in profile.outer})
    return [
        f"{profile.total} samples. Self time (innermost Python frame, with the C code it calls):",
        "",
        *(row(name, n) for name, n in profile.own.most_common(count)),
        "",
        "Inclusive time (below the event loop):",
        "",
        *(row(name, n) for name, n in deeper.most_common(count)),
    ]
