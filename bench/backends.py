"""The simulated Ollama backends: several simulator processes, several ports each.

One simulator process costs about 22 µs of CPU per paced line, so 40k lines/s would
saturate a single one; the streams are therefore spread over ``processes`` processes
(one event loop each) with ``ports_per_process`` backends each. Every target sees the
same endpoints: direct clients spread over them, the proxies round-robin over them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.processes import Child, free_port


@dataclass(frozen=True)
class Profile:
    """How the simulators answer: pacing and length (``num_predict`` may shorten it)."""

    name: str
    tps: float  # tokens per second of each stream; 0: no pacing
    answer_tokens: int

    def describe(self) -> str:
        pace = f"{self.tps:g} tok/s" if self.tps else "unpaced"
        return f"{self.answer_tokens} tokens, {pace}"


class Backends:
    """Simulator processes serving one profile; ``endpoints`` are ``host:port``."""

    def __init__(
        self,
        profile: Profile,
        log_dir: Path,
        env: Mapping[str, str],
        *,
        processes: int = 2,
        ports_per_process: int = 2,
    ) -> None:
        self.profile = profile
        self.children: list[Child] = []
        self.ports: list[int] = []
        for index in range(processes):
            ports = [free_port() for _ in range(ports_per_process)]
            argv = [
                sys.executable,
                "-m",
                "olbproxy.simulator",
                "--ports",
                ",".join(map(str, ports)),
                "--tps",
                f"{profile.tps:g}",
                "--answer-tokens",
                str(profile.answer_tokens),
                "--name-prefix",
                "sim",
                "--any-host",
            ]
            self.children.append(Child(f"sim-{profile.name}-{index}", argv, log_dir, env=env))
            self.ports.extend(ports)
        try:
            for index, child in enumerate(self.children):
                first = index * ports_per_process
                for port in self.ports[first : first + ports_per_process]:
                    child.wait_for_port(port)
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            child.stop()
