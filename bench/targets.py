"""What the load is aimed at: ``direct``, ``proxy`` (olbproxy), ``minimal`` and ``nginx``.

Every target is started fresh for each scenario in front of that scenario's simulators
and stopped afterwards, so no scenario inherits another's memory or connections.
``addresses`` are where the load goes (``direct`` has one per simulator and the load
spreads over them; each proxy has one and round-robins over the simulators itself);
``pids()`` are the processes whose CPU time and memory count as the target's.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import ClassVar

from bench.backends import Backends
from bench.processes import BenchError, Child, descendants, free_port

REPO = Path(__file__).resolve().parent.parent


class Target:
    """A target of the load; subclasses start and stop their processes."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    python: ClassVar[bool] = False  # a Python process py-spy can sample (--profile)

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.addresses: list[str] = []
        self.child: Child | None = None
        # Put before a Python target's command (instructions.py runs it under callgrind),
        # with the time it may then take to listen.
        self.launcher: list[str] = []
        self.start_timeout = 30.0

    def available(self) -> str | None:
        """None when the target can run here, else why it cannot (printed, then skipped)."""
        return None

    def start(self, backends: Backends) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return descendants(self.child.pid) if self.child is not None else []

    def after_load(self) -> dict[str, float]:
        """The target's state once a load has ended (the proxy's persistence)."""
        return {}

    def stall_counters(self) -> dict[str, float] | None:
        """The target's own stall counters now (olbproxy's loop lag and GC pauses), to be
        compared across a window; None for targets that have none."""
        return None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def close(self) -> None:
        """Once, at the very end (servers the target keeps across scenarios)."""


class Direct(Target):
    name = "direct"
    description = "the load talks to the simulators themselves"

    def start(self, backends: Backends) -> None:
        self.addresses = backends.endpoints

    def pids(self) -> list[int]:
        return []


class Minimal(Target):
    name = "minimal"
    python = True
    description = "bench/minimal.py: aiohttp iter_any() -> write() pass-through, one process"

    def start(self, backends: Backends) -> None:
        port = free_port()
        argv = [
            *self.launcher,
            sys.executable,
            "-m",
            "bench.minimal",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstreams",
            ",".join(backends.endpoints),
        ]
        self.child = Child("minimal", argv, self.work, env=self.env, cwd=REPO)
        self.child.wait_for_port(port, timeout=self.start_timeout)
        self.addresses = [f"127.0.0.1:{port}"]


NGINX_CONF = """\
# Written by bench/targets.py: one worker (a per-core comparison with the one-process
# Python proxies), no buffering, HTTP/1.1 keep-alive to the simulators.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 16384;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    upstream simulators {{
{servers}
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://simulators;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


class Nginx(Target):
    name = "nginx"
    description = "Debian's nginx, proxy_buffering off, keep-alive upstream, 1 worker process"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
            None,
        )

    def available(self) -> str | None:
        if self.binary() is None:
            return "nginx is not installed (apt-get install -y nginx-light)"
        return None

    def start(self, backends: Backends) -> None:
        binary = self.binary()
        if binary is None:
            raise BenchError("nginx is not installed")
        prefix = self.work / "nginx"
        prefix.mkdir(exist_ok=True)
        # Workers run as nobody when the master is root: they must reach the temp paths.
        prefix.chmod(0o755)
        port = free_port()
        servers = "\n".join(f"        server {e} max_fails=0;" for e in backends.endpoints)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, servers=servers, port=port))
        argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        self.child = Child("nginx", argv, self.work, env=self.env)
        self.child.wait_for_port(port)
        self.addresses = [f"127.0.0.1:{port}"]
