"""Benchmark olbproxy against the simulators direct, a minimal aiohttp proxy and nginx,
and its placement on a team's working day (teamday.py: round_robin against cache_aware).

    .venv/bin/python bench/run.py [--quick] [--only a1000,ttft,teamday]
                                  [--targets direct,proxy] [--check] [--no-install]

One run on one machine: for each scenario (see scenarios.py) the simulators start with
the pacing it needs, then each target in turn is started fresh in front of them, loaded
from a separate process (wrk, or the aiohttp client of load.py), measured and stopped.
Prints a Markdown table and writes it with JSON lines to bench/results/. Exits 0 unless
the bench could not run at all; ``--check`` names every goal of issue 7 that was missed
and still exits 0 (a busy machine should not fail a pipeline; read the MISS lines).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # `python bench/run.py` puts bench/ itself on sys.path; the package needs its parent.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime
import os
import platform
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from bench import goals, profiles, report, teamday
from bench.backends import Backends
from bench.load import wrk_binary
from bench.processes import BenchError, quiet
from bench.proxy import Olbproxy, UnrecordedOlbproxy
from bench.scenarios import Context, Measurement, Scenario, run, scenarios
from bench.targets import REPO, Direct, Minimal, Nginx, Target

TARGETS = ("direct", "proxy", "minimal", "nginx")
# Not run unless named: `--targets direct,proxy,proxy-norec` (persistence on against off).
EXTRA_TARGETS = ("proxy-norec",)
ALIASES = {
    "a": ("a100", "a1000", "a2000"),
    "b": ("a1000",),
    "c": ("ttft",),
    "d": ("gaps",),
    "e": ("whole", "whole2", "whole3"),
    "f": ("idle",),
}
TEAMDAY = "teamday"  # issue 12's scenario: its own simulators and proxies (teamday.py)
RESULTS = REPO / "bench" / "results"
STARTUP_PATIENCE = 30.0  # seconds a started target may take to go quiet before its warm-up
# ... and all of them together: on a machine busy with other work every wait would last
# STARTUP_PATIENCE, 35 of them in a whole run.
STARTUP_BUDGET = 180.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios: a100,a1000,a2000,ttft,gaps,whole,idle "
        "(or issue 7's letters a-f), teamday (issue 12)",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument(
        "--check", action="store_true", help="compare with the goals of issues 7 and 12"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install wrk and nginx"
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the Python client even where wrk would do"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (configs, logs)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the Python targets with py-spy during streaming windows (not for figures)",
    )
    parser.add_argument(
        "--patience",
        type=float,
        default=60.0,
        help="seconds in all to wait, before runs, for other processes to leave the CPU idle",
    )
    parser.add_argument("--sim-processes", type=int, default=2, help="simulator processes")
    parser.add_argument("--sim-ports", type=int, default=2, help="backends per simulator process")
    return parser.parse_args(argv)


def selected(only: str, quick: bool) -> tuple[list[Scenario], bool]:
    """The scenarios of issue 7 to run, and whether to run the team day."""
    everything = scenarios(quick)
    if not only.strip():
        return everything, True
    wanted: set[str] = set()
    day = False
    for word in only.split(","):
        word = word.strip()
        if word == TEAMDAY:
            day = True
            continue
        keys = ALIASES.get(word, (word,))
        unknown = [k for k in keys if k not in {s.key for s in everything}]
        if unknown:
            raise SystemExit(f"bench: unknown scenario {word!r}; see --help")
        wanted.update(keys)
    return [s for s in everything if s.key in wanted], day


def install_tools(allowed: bool) -> None:
    """wrk and nginx from Debian's packages when root or passwordless sudo allows it."""
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not _has(tool)]
    if not missing:
        return
    if not allowed or shutil.which("apt-get") is None:
        print(f"bench: not installing {' '.join(missing)} (--no-install or no apt-get)")
        return
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo") and _quiet(["sudo", "-n", "true"]):
        sudo = ["sudo", "-n"]
    else:
        print(f"bench: cannot install {' '.join(missing)}: not root and no passwordless sudo")
        return
    print(f"bench: installing {' '.join(missing)} with apt-get ...", flush=True)
    command = [*sudo, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q"]
    if not _quiet([*command, *missing]):
        _quiet([*sudo, "apt-get", "update", "-q"])
        if not _quiet([*command, *missing]):
            print(f"bench: apt-get install {' '.join(missing)} failed; going on without")


def _has(tool: str) -> bool:
    return shutil.which(tool) is not None or os.access(f"/usr/sbin/{tool}", os.X_OK)


def _quiet(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"bench: the open-files limit is {hard}; {needed} may be needed (ulimit -n)")


def version_of(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else ""


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model or platform.machine()}), Linux {platform.release()}"


def build_targets(names: list[str], work: Path, env: dict[str, str]) -> list[Target]:
    kinds: dict[str, type[Target]] = {"direct": Direct, "minimal": Minimal, "nginx": Nginx}
    targets: list[Target] = []
    for name in names:
        if name == "proxy":
            targets.append(Olbproxy(work, env, slots=4096))
        elif name == "proxy-norec":
            targets.append(UnrecordedOlbproxy(work, env, slots=4096))
        elif name in kinds:
            targets.append(kinds[name](work, env))
        else:
            known = ", ".join((*TARGETS, *EXTRA_TARGETS))
            raise SystemExit(f"bench: unknown target {name!r}; choose from {known}")
    return targets


def summary(m: Measurement) -> str:
    parts = []
    if m.tokens_per_s:
        parts.append(f"{m.tokens_per_s:,.0f} tokens/s")
    if m.answers_per_s and m.scenario.startswith("whole"):
        parts.append(f"{m.answers_per_s:,.0f} req/s")
    if m.cpu_us_per_answer is not None:
        parts.append(f"{m.cpu_us_per_answer:.0f} µs CPU/request")
    if m.cpu_us_per_token is not None:
        parts.append(f"{m.cpu_us_per_token:.1f} µs CPU/token")
    if m.ttft_ms.get("n"):
        parts.append(f"TTFT p50 {m.ttft_ms['p50']:.2f} p99 {m.ttft_ms['p99']:.2f} ms")
    if m.gap_ms.get("n"):
        parts.append(f"gap p50 {m.gap_ms['p50']:.1f} p99 {m.gap_ms['p99']:.1f} ms")
    if m.rss_per_stream_kib is not None:
        parts.append(f"{m.rss_per_stream_kib:.1f} KiB/stream ({m.opened} open)")
    if m.cores:
        parts.append(
            "cores: target {:.2f} (busiest process {:.2f}) sims {:.2f} load {:.2f} db {:.2f} "
            "machine {:.2f}".format(
                *(
                    m.cores.get(k, 0.0)
                    for k in ("target", "target_busiest", "backends", "load", "db", "machine")
                )
            )
        )
    parts.append(f"{m.errors} errors")
    return ", ".join(parts) + f" [{m.seconds:.0f} s]"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    chosen, day = selected(args.only, args.quick)
    names = [n.strip() for n in args.targets.split(",") if n.strip()] if chosen else []
    if chosen and "direct" not in names:
        print("bench: without `direct` no ratio can be computed; adding it")
        names.insert(0, "direct")
    if chosen:
        install_tools(not args.no_install)
    raise_file_limit(3 * max((s.connections for s in chosen), default=0) + 1000)
    use_wrk = wrk_binary() is not None and not args.no_wrk
    if not use_wrk:
        why = "--no-wrk" if args.no_wrk else "wrk is not installed"
        print(f"bench: {why}: the Python client drives the stream counts too (more load CPU)")

    work = Path(tempfile.mkdtemp(prefix="olbproxy-bench-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    targets = build_targets(names, work, env)
    for target in list(targets):
        reason = target.available()
        if reason is not None:
            print(f"bench: skipping target {target.name}: {reason}")
            targets.remove(target)
    proxy = next((t for t in targets if type(t) is Olbproxy), None)
    print(f"bench: work directory {work}; targets {', '.join(t.name for t in targets)}")

    results: dict[tuple[str, str], Measurement] = {}
    days: list[teamday.Run] = []
    ctx = Context(work, env, None, use_wrk, args.sim_processes * args.sim_ports, [])
    if args.profile:
        if profiles.binary() is None:
            print("bench: --profile needs py-spy (pip install py-spy); not profiling")
        else:
            ctx.profile_dir = RESULTS / f"profiles-{stamp.replace(':', '')}"
            ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    total = len(chosen) * len(targets)
    patience = args.patience
    startup = STARTUP_BUDGET
    done = 0
    try:
        for profile, group in groupby(chosen, key=lambda s: s.profile):
            print(f"bench: simulators: {profile.describe()}", flush=True)
            backends = Backends(
                profile,
                work,
                env,
                processes=args.sim_processes,
                ports_per_process=args.sim_ports,
            )
            try:
                if proxy is not None and proxy.token is None and proxy.auth:
                    # The token exists before any load runs: every target gets the header.
                    try:
                        proxy.start(backends)
                    except BenchError as error:
                        print(f"bench: skipping target proxy: {error}", flush=True)
                        targets.remove(proxy)
                        total -= len(chosen)
                        proxy.close()
                        proxy = None
                    else:
                        proxy.stop()
                for scenario in group:
                    for target in targets:
                        done += 1
                        began = time.monotonic()
                        label = f"[{done:2}/{total}] {scenario.key:6} {target.name:8}"
                        busy, waited = quiet(patience=min(patience, 15.0))
                        patience = max(0.0, patience - waited)
                        try:
                            target.start(backends)
                            # Its start-up work done before its warm-up: olbproxy's
                            # placement feed reads what the run's earlier proxies recorded
                            # (15,000-45,000 rooms by the later scenarios: seconds of
                            # SecantusDB's CPU, which overlapped the window of "whole").
                            starting, waited = quiet(patience=min(STARTUP_PATIENCE, startup))
                            startup = max(0.0, startup - waited)
                            # Each olbproxy knows its own user; the others get the
                            # main proxy's header, so every target parses one.
                            own = target.token if isinstance(target, Olbproxy) else None
                            ctx.token = own or (proxy.token if proxy is not None else None)
                            ctx.db_pids = [proxy.db.pid] if proxy and proxy.db else []
                            m = run(scenario, target, backends, ctx)
                            if busy >= 0.3:
                                m.notes.append(
                                    f"started while other processes kept {busy:.2f} cores busy"
                                )
                            if starting >= 0.3:
                                m.notes.append(
                                    f"still starting after {waited:.0f} s: "
                                    f"{starting:.2f} cores busy when the warm-up began"
                                )
                        except BenchError as error:
                            m = Measurement(scenario.key, target.name, scenario.title)
                            m.skipped = str(error).splitlines()[0]
                            print(f"{label} FAILED: {error}", flush=True)
                        finally:
                            target.stop()
                        m.seconds = time.monotonic() - began
                        if m.skipped is None:
                            print(f"{label} {summary(m)}", flush=True)
                        results[scenario.key, target.name] = m
            finally:
                backends.stop()
        if day:
            days = teamday.run(work, env)
    except KeyboardInterrupt:
        print("bench: interrupted; reporting what was measured")
    except BenchError as error:
        print(f"bench: could not run: {error}", file=sys.stderr)
        if not results and not days:
            return 1
    finally:
        persistence = proxy.persistence() if proxy is not None else ""
        for target in targets:
            target.stop()
            target.close()

    header = run_header(args, (stamp, started), targets, proxy, persistence, ctx)
    verdicts = None
    if args.check:
        verdicts = (goals.check(results) if chosen else []) + (teamday.goals(days) if day else [])
    text = report.markdown(header, chosen, [t.name for t in targets], results, verdicts)
    text += report.profile_sections(results)
    if days:
        text += "\n" + "\n".join(teamday.markdown(days)) + "\n"
    extra = teamday.records(days)
    jsonl, md = report.write(RESULTS, header, list(results.values()), verdicts, text, extra)
    print()
    print(text)
    print(f"bench: results in {md.relative_to(REPO)} and {jsonl.relative_to(REPO)}")
    if verdicts is not None:
        misses = [v for v in verdicts if v.passed is False]
        for v in misses:
            print(f"MISS: {v.goal}: {v.value}")
        if args.quick:
            print("bench: --quick uses smaller counts than the goals assume; run without it")
    if args.keep:
        print(f"bench: logs and configs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_header(
    args: argparse.Namespace,
    started: tuple[str, float],
    targets: list[Target],
    proxy: Olbproxy | None,
    persistence: str,
    ctx: Context,
) -> dict[str, Any]:
    given = shlex.join(sys.argv[1:])
    if os.environ.get("MAKELEVEL"):  # started by `make bench`
        command = "make bench" + (f" BENCH_ARGS={shlex.quote(given)}" if given else "")
    else:
        command = ".venv/bin/python bench/run.py" + (f" {given}" if given else "")
    setup: dict[str, str] = {t.name: t.description for t in targets}
    for target in targets:
        if isinstance(target, UnrecordedOlbproxy):
            features = target.features()
            setup[target.name] += " — " + ", ".join(f"{k}: {v}" for k, v in features.items())
    if proxy is not None:
        features = proxy.features()
        setup["proxy"] += " — " + ", ".join(f"{k}: {v}" for k, v in features.items())
        if persistence:
            setup["persistence"] = persistence
        for note in proxy.notes:
            setup.setdefault("proxy notes", "")
            setup["proxy notes"] += ("; " if setup["proxy notes"] else "") + note
    setup["simulators"] = (
        f"{args.sim_processes} processes x {args.sim_ports} ports (python -m olbproxy.simulator)"
    )
    setup["load"] = (
        f"wrk {ctx.wrk_threads} threads + bench/stream.lua (streams, non-streaming); "
        if ctx.use_wrk
        else "aiohttp client (wrk absent) for everything; "
    ) + "bench/load.py aiohttp client (TTFT, gaps, idle streams)"
    return {
        "started": started[0],
        "machine": machine(),
        "command": command,
        "quick": args.quick,
        "wall_seconds": time.monotonic() - started[1],
        "python": platform.python_version(),
        "nginx": version_of(["nginx", "-v"]) if Nginx.binary() else "absent",
        "wrk": version_of(["wrk", "-v"]) if ctx.use_wrk else "absent",
        "setup": setup,
    }


if __name__ == "__main__":
    raise SystemExit(main())
