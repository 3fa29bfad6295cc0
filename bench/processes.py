"""Child processes of the bench and what /proc says about them.

Every server the bench starts (simulators, proxies, SecantusDB) is a ``Child``: its own
session, its output in a log file of the run's temp directory, stopped with SIGTERM
(SIGKILL after a grace period) by the bench and by nobody else. ``Sample`` reads CPU
time (utime + stime, all threads) and RSS of a set of processes at one instant, and the
machine's busy time from ``/proc/stat``, so that two samples give cores used and CPU
per token over a window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """The bench could not do what it needed (a server did not start, a tool failed)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Child:
    """A process the bench started; ``stop()`` ends it (and only it, by its pid)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log_dir / f"{name}.log"
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else log,
                stderr=log,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the bench only
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_port(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(
                    f"{self.name} exited with status {self.popen.returncode} before listening "
                    f"on port {port}; its log ({self.log}) ends with:\n{self.tail()}"
                )
            if port_open(port):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not listen on port {port} within {timeout:g}s")

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (nginx's workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread, living or gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    try:
        resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
    except (OSError, IndexError):
        return 0
    return int(resident) * PAGE_SIZE


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


@dataclass(frozen=True)
class Sample:
    """CPU seconds per role (``target``, ``backends``, ``load``, ``db``) at one instant."""

    at: float  # time.monotonic()
    cpu: dict[str, float]
    per_process: dict[str, list[float]]
    machine: float

    @classmethod
    def take(cls, roles: Mapping[str, Iterable[int]]) -> Sample:
        per_process = {role: [cpu_seconds(p) for p in pids] for role, pids in roles.items()}
        return cls(
            at=time.monotonic(),
            cpu={role: sum(values) for role, values in per_process.items()},
            per_process=per_process,
            machine=machine_busy_seconds(),
        )


@dataclass(frozen=True)
class Usage:
    """What happened between two samples: cores used per role and by everything else."""

    seconds: float
    cpu: dict[str, float]  # CPU seconds per role
    busiest: dict[str, float]  # the busiest single process of each role, in cores
    machine: float  # cores busy on the whole machine

    @classmethod
    def between(cls, before: Sample, after: Sample) -> Usage:
        seconds = max(after.at - before.at, 1e-9)
        cpu = {role: after.cpu[role] - before.cpu.get(role, 0.0) for role in after.cpu}
        busiest = {}
        for role, values in after.per_process.items():
            old = before.per_process.get(role, [0.0] * len(values))
            deltas = [a - b for a, b in zip(values, old, strict=False)] or [0.0]
            busiest[role] = max(deltas) / seconds
        return cls(seconds, cpu, busiest, (after.machine - before.machine) / seconds)

    def cores(self, role: str) -> float:
        return self.cpu.get(role, 0.0) / self.seconds

    @property
    def others(self) -> float:
        """Cores used by processes the bench did not start (other jobs on the machine)."""
        return max(0.0, self.machine - sum(self.cpu.values()) / self.seconds)


def total_rss(pids: Iterable[int]) -> int:
    return sum(rss_bytes(p) for p in pids)


def quiet(limit: float = 0.3, patience: float = 30.0) -> tuple[float, float]:
    """Wait (up to ``patience`` s) until the machine has less than ``limit`` cores busy.

    The bench's own servers idle between runs, so what is busy then is someone else's
    work (tests, builds) that would blur the figures. Returns the last level seen and
    the seconds spent waiting.
    """
    began = time.monotonic()
    deadline = began + patience
    while True:
        before, start = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        busy = (machine_busy_seconds() - before) / (time.monotonic() - start)
        if busy < limit or time.monotonic() >= deadline:
            return busy, time.monotonic() - began
