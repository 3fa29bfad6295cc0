"""The ``proxy`` target: ``olbproxy serve`` with every real feature that exists turned on.

On: authentication (a JWT bearer token on every request: a user made with ``olbproxy
user add`` and a token from ``olbproxy token issue``, HS256 with a fresh 48-byte
``JWT_SECRET``), routing by model to a group of all the simulators, Prometheus metrics,
and the store on a real MongoDB wire-protocol server (SecantusDB, started here on a temp
directory). Admission never queues: each simulator gets more slots than the scenario has
streams.

olbproxy is being built while this bench exists, so each feature degrades on its own
with one printed line: a config key olbproxy does not know yet is left out, a store
that cannot start falls back to ``memory`` (the token then comes from
``/api/auth/register`` + ``/api/auth/login``), and auth that cannot produce a working
token is switched off. ``notes`` keeps those lines for the report.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.backends import Backends
from bench.processes import BenchError, Child, free_port
from bench.targets import REPO, Target

MODEL = "gpt-oss:20b"
USER = "bench"
DATABASE = "olbproxy_bench"


# Seconds the bench waits after a load for the recorder's backlog to reach MongoDB.
DRAIN_LIMIT = 300.0
# The routes whose exchanges are recorded (persistence/history.py RECORDED).
RECORDED = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions"})


def secantusd_binary() -> str | None:
    for candidate in (
        os.environ.get("OLBPROXY_SECANTUSD", ""),
        str(REPO / ".venv-secantus" / "bin" / "secantusd-py"),
        shutil.which("secantusd-py") or "",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def http(method: str, url: str, *, token: str | None = None, body: Any = None) -> tuple[int, bytes]:
    """One small request from the bench itself (set-up and checks, never load)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError as error:
        return 0, str(error).encode()


class Olbproxy(Target):
    name = "proxy"
    python = True
    description = "olbproxy serve: auth (JWT), routing, metrics, MongoDB store"

    def __init__(self, work: Path, env: dict[str, str], *, slots: int) -> None:
        super().__init__(work, env)
        self.slots = slots
        self.secret = base64.b64encode(secrets.token_bytes(48)).decode()
        self.password = secrets.token_urlsafe(18)
        self.auth = True
        self.metrics = True
        self.store = "mongodb"
        self.left_out: set[str] = set()  # config keys this olbproxy does not know
        self.token: str | None = None
        self.notes: list[str] = []
        self.db: Child | None = None
        self.db_uri = ""
        self.database = DATABASE  # one per start (``start``)
        self.port = 0
        self.config = work / "olbproxy.yaml"
        self._user_added = False
        self.starts = 0
        self._written = 0  # documents in `messages` when this proxy started
        self._recorded_before = 0.0  # exchanges the proxy had recorded at the last look

    # -- features -----------------------------------------------------------------------

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)
            print(f"  proxy: {line}", flush=True)

    def _start_db(self) -> None:
        binary = secantusd_binary()
        if binary is None:
            self.store = "memory"
            self.note(
                "persistence OFF: no SecantusDB server (set OLBPROXY_SECANTUSD or run "
                "`make bench`, which installs it); store.backend: memory"
            )
            return
        port = free_port()
        storage = self.work / "secantus"
        argv = [binary, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(storage)]
        self.db = Child("secantusd", argv, self.work, env=self.env)
        try:
            self.db.wait_for_port(port, timeout=30)
        except BenchError as error:
            self.db.stop()
            self.db = None
            self.store = "memory"
            self.note(f"persistence OFF: SecantusDB did not start ({error}); store.backend: memory")
            return
        self.db_uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"

    def _settings(self, backends: Backends) -> dict[str, Any]:
        group: dict[str, Any] = {
            "name": "bench",
            "models": [MODEL],
            "endpoints": [f"http://{e}" for e in backends.endpoints],
            # More slots per simulator than the scenario has streams: nothing queues.
            "slots": self.slots,
            "queue_size": self.slots,
        }
        settings: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "log_level": "INFO",
            "shutdown_deadline": 2,
            "groups": [group],
            "auth": {"enabled": self.auth, "bcrypt_cost": 4, "registration": "open"},
            "metrics": {"enabled": self.metrics},
            "store": {
                "backend": self.store,
                "database": self.database,
                # A spool of its own for each start: no replay of an earlier run's backlog.
                "spool_dir": str(self.work / f"spool-{self.starts}"),
            },
        }
        for dotted in self.left_out:
            section, _, key = dotted.partition(".")
            holder = settings.get(section) if key else settings
            if isinstance(holder, dict):
                holder.pop(key or section, None)
        return settings

    def _environment(self) -> dict[str, str]:
        env = dict(self.env)
        env["JWT_SECRET"] = self.secret
        if self.db_uri and self.store == "mongodb":
            env["MONGODB_URI"] = self.db_uri
        return env

    def _olbproxy(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "olbproxy", *args]
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            env=self._environment(),
            cwd=self.work,
            timeout=60,
            check=False,
        )

    def _write_config(self, backends: Backends) -> None:
        """Write the config; leave out keys ``check-config`` says olbproxy does not know."""
        for _ in range(10):
            text = yaml.safe_dump(self._settings(backends), sort_keys=False)
            self.config.write_text(text)
            checked = self._olbproxy("check-config", str(self.config))
            if checked.returncode == 0:
                return
            message = (checked.stderr or checked.stdout).strip().splitlines()[-1:]
            found = re.search(r"olbproxy\.yaml: ([\w.]+): unknown key", " ".join(message))
            if found is None:
                raise BenchError(f"olbproxy check-config refused the bench config: {message}")
            key = found.group(1)
            self.left_out.add(key)
            self.note(f"olbproxy does not know `{key}` yet: left out of the config")
        raise BenchError("olbproxy check-config kept refusing the bench config")

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, backends: Backends) -> None:
        if self.db is None and self.store == "mongodb":
            self._start_db()
        while True:
            self.starts += 1
            if self.store == "mongodb":
                # A database of its own for each start, as a fresh deployment has. Sharing
                # one, a proxy started for a later scenario read back the placements of
                # the earlier ones' rooms (item 19's start-up work: 53,000 rooms after the
                # first round of "whole"), and SecantusDB took 0.69 of the two cores in
                # the next round's window; a horizon of 120 s was not short enough on a
                # host that ran the rounds a minute apart.
                self.database = f"{DATABASE}_{self.starts}"
                self.token, self._user_added = None, False
            self.port = free_port()
            self._write_config(backends)
            argv = [sys.executable, "-m", "olbproxy", "serve", "--config", str(self.config)]
            argv = [*self.launcher, *argv]
            self.child = Child("olbproxy", argv, self.work, env=self._environment(), cwd=self.work)
            try:
                self.child.wait_for_port(self.port, timeout=self.start_timeout)
            except BenchError as error:
                self.child.stop()
                self.child = None
                if not self._degrade(str(error)):
                    raise
                continue
            self.addresses = [f"127.0.0.1:{self.port}"]
            if self._authenticate():
                break
            self.stop()
        self._check_metrics()
        if self.store == "mongodb":
            self._written = self._messages() or 0  # 0: the database is new
            self._recorded_before = 0.0  # a fresh process counts from zero

    def _degrade(self, why: str) -> bool:
        """One feature fewer after a failed start; False when nothing is left to drop.

        The feature the error names goes first (``auth.``/JWT, ``store.``/MongoDB,
        ``metrics.``); without a hint: the store, then auth, then metrics.
        """
        last = why.strip().splitlines()[-1] if why.strip() else why
        lowered = last.lower()
        hints = {
            "store": ("store", "mongodb", "spool"),
            "auth": ("auth", "jwt", "token", "bcrypt"),
            "metrics": ("metrics",),
        }
        named = [f for f, words in hints.items() if any(w in lowered for w in words)]
        for feature in [*named, "store", "auth", "metrics"]:
            if feature == "store" and self.store == "mongodb":
                self.store = "memory"
                self.note(
                    f"persistence OFF: olbproxy did not start with the MongoDB store ({last})"
                )
                return True
            if feature == "auth" and self.auth:
                self.auth = False
                self.note(f"auth OFF: olbproxy did not start with auth enabled ({last})")
                return True
            if feature == "metrics" and self.metrics:
                self.metrics = False
                self.note(f"metrics OFF: olbproxy did not start with metrics enabled ({last})")
                return True
        return False

    def _authenticate(self) -> bool:
        """Get a token that works, or switch auth off; False means: restart the proxy."""
        if not self.auth:
            self.token = None
            return True
        base = f"http://{self.addresses[0]}"
        if self.store != "mongodb" or self.token is None:
            self.token = self._issue_token(base)
        if self.token is not None:
            status, _ = http("GET", base + "/api/tags", token=self.token)
            anonymous, _ = http("GET", base + "/api/tags")
            if status == 200 and anonymous == 401:
                return True
            self.note(
                f"the bench's token got {status} and no token got {anonymous} on /api/tags "
                "(expected 200 and 401)"
            )
        self.auth = False
        self.note("auth OFF: no working bearer token could be made; measuring without auth")
        return False

    def _issue_token(self, base: str) -> str | None:
        if self.store == "mongodb":
            if not self._user_added:
                added = self._olbproxy("user", "add", USER, "--config", str(self.config),
                                       stdin=self.password + "\n")  # fmt: skip
                output = added.stdout + added.stderr
                self._user_added = added.returncode == 0 or "exist" in output or "taken" in output
            issued = self._olbproxy("token", "issue", USER, "--config", str(self.config))
            lines = issued.stdout.split()
            if issued.returncode == 0 and lines:
                return lines[0]
            why = (issued.stderr or issued.stdout).strip()[-200:]
            self.note(
                f"`olbproxy token issue` failed ({why}); "
                "trying /api/auth/register + /api/auth/login"
            )
        credentials = {"username": USER, "password": self.password}
        http("POST", base + "/api/auth/register", body=credentials)
        status, body = http("POST", base + "/api/auth/login", body=credentials)
        if status != 200:
            self.note(f"/api/auth/login answered {status}: {body[:200]!r}")
            return None
        try:
            token = json.loads(body).get("token")
        except ValueError:
            token = None
        return token if isinstance(token, str) else None

    def _check_metrics(self) -> None:
        if not self.metrics:
            return
        status, body = http("GET", f"http://{self.addresses[0]}/metrics", token=self.token)
        if status != 200 or b"olbproxy_" not in body:
            self.note(f"metrics: /metrics answered {status} without olbproxy_ series")

    def close(self) -> None:
        if self.db is not None:
            self.db.stop(grace=15)
            self.db = None

    # -- what the report says about it --------------------------------------------------

    def features(self) -> dict[str, str]:
        auth = "JWT bearer (olbproxy token issue)" if self.store == "mongodb" else "JWT bearer"
        return {
            "auth": auth if self.auth and self.token else "off",
            "metrics": "on" if self.metrics else "off",
            "store": f"mongodb (SecantusDB {self.db_uri.split('/')[2]})"
            if self.store == "mongodb" and self.db_uri
            else self.store,
        }

    def after_load(self) -> dict[str, float]:
        """How far persistence got: the backlog when the load stopped, how long it took to
        drain, and the exchanges recorded against the messages MongoDB then holds."""
        if self.store != "mongodb" or self.child is None:
            return {}
        state: dict[str, float] = dict(self._backlog())
        started = time.monotonic()
        while sum(self._backlog().values()) and time.monotonic() - started < DRAIN_LIMIT:
            time.sleep(0.25)  # a bench polling the proxy's own gauge, not a test race
        state["drain_s"] = time.monotonic() - started if sum(state.values()) else 0.0
        state["drained"] = float(not sum(self._backlog().values()))
        written = self._messages()
        if written is not None:
            state["written"] = written - self._written
            self._written = written
        recorded = self._recorded()
        state["recorded"] = recorded - self._recorded_before
        self._recorded_before = recorded
        return state

    def _metrics_text(self) -> str:
        _, body = http("GET", f"http://{self.addresses[0]}/metrics", token=self.token)
        return body.decode(errors="replace")

    def _backlog(self) -> dict[str, float]:
        pattern = r'^olbproxy_persistence_backlog\{stage="(\w+)"\} (\S+)$'
        return {stage: float(v) for stage, v in re.findall(pattern, self._metrics_text(), re.M)}

    def _recorded(self) -> float:
        """Exchanges the recorder was given: model requests on the recorded routes."""
        pattern = r"^olbproxy_requests_total\{([^}]*)\} (\S+)$"
        total = 0.0
        for labels, value in re.findall(pattern, self._metrics_text(), re.M):
            endpoint = re.search(r'endpoint="([^"]*)"', labels)
            if endpoint is not None and endpoint.group(1) in RECORDED:
                total += float(value)
        return total

    def stall_counters(self) -> dict[str, float] | None:
        """The loop-lag histogram's cumulative buckets and the GC pause totals, now."""
        if self.child is None or not self.metrics:
            return None
        status, body = http("GET", f"http://{self.addresses[0]}/metrics", token=self.token)
        if status != 200:
            return None
        text = body.decode(errors="replace")
        counters: dict[str, float] = {}
        lag = r'^olbproxy_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$'
        for bound, value in re.findall(lag, text, re.M):
            if bound != "+Inf":
                counters[f"lag_le_{bound}"] = float(value)
            else:
                counters["lag_le_inf"] = float(value)
        for kind, key in (("count", "gc_count"), ("sum", "gc_seconds")):
            pattern = rf"^olbproxy_gc_pause_seconds_{kind}\{{[^}}]*\}} (\S+)$"
            counters[key] = sum(float(v) for v in re.findall(pattern, text, re.M))
        return counters

    def _messages(self) -> int | None:
        """Documents in the ``messages`` collection, or None when it cannot be read."""
        counts = self._collections()
        return counts.get("messages", 0) if counts is not None else None

    def _collections(self) -> dict[str, int] | None:
        if not self.db_uri:
            return None
        try:
            from pymongo import MongoClient

            client: MongoClient[dict[str, Any]] = MongoClient(
                self.db_uri, serverSelectionTimeoutMS=3000
            )
            try:
                database = client[self.database]
                return {
                    name: database[name].estimated_document_count()
                    for name in sorted(database.list_collection_names())
                }
            finally:
                client.close()
        except Exception:  # a report line must not stop the bench
            return None

    def persistence(self) -> str:
        """What olbproxy wrote to MongoDB so far, in one line."""
        if self.store != "mongodb" or not self.db_uri:
            return "no MongoDB store"
        counts = self._collections()
        if counts is None:
            return "could not read MongoDB"
        listed = ", ".join(f"{name}={count}" for name, count in counts.items()) or "none"
        identity = {"users", "api_keys"}
        if not set(counts) - identity:
            return (
                f"collections: {listed}; no exchange records yet (olbproxy persists only "
                "users and keys so far)"
            )
        return f"collections: {listed}"


class UnrecordedOlbproxy(Olbproxy):
    """The same proxy with conversation recording off (``store.record: false``): beside
    ``proxy`` in one run, it shows what persistence costs a stream."""

    name = "proxy-norec"
    description = "olbproxy serve as `proxy`, but store.record: false (no persistence)"

    def __init__(self, work: Path, env: dict[str, str], *, slots: int) -> None:
        super().__init__(work, env, slots=slots)
        self.store = "memory"  # users live in memory; nothing is recorded

    def _settings(self, backends: Backends) -> dict[str, Any]:
        settings = super()._settings(backends)
        settings["store"]["record"] = False
        return settings

    def features(self) -> dict[str, str]:
        return {**super().features(), "store": "memory, record: false"}
