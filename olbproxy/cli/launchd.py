"""launchd jobs for the Mac: one per local Ollama instance, one for the proxy, and the
script that installs them, all generated from the config the proxy reads, so the ports
launchd starts Ollama on are the ports the proxy sends requests to.

``olbproxy launchd generate`` writes ``<label>.plist`` files and ``install.sh`` into a
directory (``launchd/`` in the repository). Paths that differ from one Mac to the next
are placeholders the install script fills in: ``@WORKDIR@`` (the checkout, found from
the script's own location) and ``@HOME@`` (the home of the user the jobs run as).

By default the jobs are LaunchAgents of the logged-in user (``gui/UID``): Ollama keeps
its models in that user's ``~/.ollama``. ``--daemon --user NAME`` makes LaunchDaemons
that run as NAME from boot, for a Mac nobody logs in to. No secret ever goes into a
plist: the proxy reads JWT_SECRET and MONGODB_URI from ``.env.local`` beside its config
or from JWT_SECRET_FILE, files only its user can read.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import plistlib
import shlex
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from olbproxy import config
from olbproxy.cli.configfile import find_config
from olbproxy.settings import GroupSettings, Settings

PREFIX = "com.olbproxy"
WORKDIR = "@WORKDIR@"
HOME = "@HOME@"
# Idle time before an instance unloads its model when the group sets no keep_alive.
# Ollama's own default (5m) makes a 120b model reload for minutes after a coffee break.
DEFAULT_KEEP_ALIVE = "30m"
# launchd gives jobs 256 open files; every stream holds a client and a backend socket.
PROXY_OPEN_FILES = 16384


@dataclass(frozen=True)
class LaunchdOptions:
    """Where things are on the Mac; the defaults fit Homebrew and a checkout with .venv."""

    config: Path  # the config the proxy will read (and the one these jobs are made from)
    workdir: Path  # the checkout: the proxy's working directory (var/spool lives there)
    ollama: str = "/opt/homebrew/bin/ollama"
    olbproxy: str | None = None  # default: <workdir>/.venv/bin/olbproxy
    log_dir: str = "~/Library/Logs/olbproxy"
    daemon: bool = False
    user: str | None = None  # LaunchDaemons: the user the jobs run as (UserName)


@dataclass(frozen=True)
class Instance:
    """A local Ollama instance the config names: where it listens and how it is used."""

    host: str
    port: int
    group: GroupSettings

    @property
    def label(self) -> str:
        return f"{PREFIX}.ollama.{self.port}"


def local_instances(settings: Settings) -> list[Instance]:
    """Endpoints on this Mac (loopback), once each; remote hosts are not ours to start."""
    found: dict[int, Instance] = {}
    for group in settings.groups:
        for url in group.endpoints:
            if (address := local_address(url)) is not None:
                # The first group naming an endpoint sets its slots, as in the pool.
                found.setdefault(address[1], Instance(*address, group))
    return sorted(found.values(), key=lambda i: i.port)


def local_address(url: str) -> tuple[str, int] | None:
    """(bind address, port) of an Ollama endpoint on this machine; None for others."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "http" or parts.port is None or not _loopback(host):
        return None
    return _bind_address(host), parts.port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind_address(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class Generator:
    """Builds the plists and the install script for one Settings and one set of options."""

    def __init__(self, settings: Settings, options: LaunchdOptions, out: Path) -> None:
        if options.daemon and not options.user:
            raise ValueError("LaunchDaemons need --user: the account whose ~/.ollama they use")
        self.settings = settings
        self.options = options
        self.out = out
        self.workdir = Path(os.path.abspath(options.workdir))

    def portable(self, path: str | Path) -> str:
        """A path as the plists write it: placeholders for the checkout and the home."""
        text = str(path)
        if text == "~" or text.startswith("~/"):
            return HOME + text[1:]
        # abspath, not resolve(): Homebrew's paths are symlinks into versioned directories.
        absolute = Path(os.path.abspath(text))
        if absolute == self.workdir:
            return WORKDIR
        if absolute.is_relative_to(self.workdir):
            return f"{WORKDIR}/{absolute.relative_to(self.workdir).as_posix()}"
        return text

    def log(self, name: str) -> str:
        return f"{self.portable(self.options.log_dir)}/{name}.log"

    def _job(self, label: str, arguments: list[str], log: str, **extra: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "Label": label,
            "ProgramArguments": arguments,
            "RunAtLoad": True,
            "KeepAlive": True,
            "StandardOutPath": log,
            "StandardErrorPath": log,
            **extra,
        }
        if self.options.daemon:
            job["UserName"] = self.options.user
            env = job.setdefault("EnvironmentVariables", {})
            # A daemon starts outside any login; HOME tells Ollama where ~/.ollama is.
            env["HOME"] = HOME
        return job

    def ollama_job(self, instance: Instance) -> dict[str, Any]:
        group = instance.group
        return self._job(
            instance.label,
            [self.options.ollama, "serve"],
            self.log(f"ollama-{instance.port}"),
            EnvironmentVariables={
                "OLLAMA_HOST": f"{instance.host}:{instance.port}",
                # The proxy admits `slots` requests per instance; Ollama must run as many.
                "OLLAMA_NUM_PARALLEL": str(group.slots),
                "OLLAMA_KEEP_ALIVE": group.keep_alive or DEFAULT_KEEP_ALIVE,
            },
        )

    def proxy_job(self) -> dict[str, Any]:
        executable = self.options.olbproxy or str(self.workdir / ".venv" / "bin" / "olbproxy")
        return self._job(
            f"{PREFIX}.proxy",
            [self.portable(executable), "serve", "--config", self.portable(self.options.config)],
            self.log("proxy"),
            # Relative paths of the config (store.spool_dir) are relative to the checkout.
            WorkingDirectory=WORKDIR,
            SoftResourceLimits={"NumberOfFiles": PROXY_OPEN_FILES},
            # launchd's SIGKILL must not cut short the streams the proxy lets finish.
            ExitTimeOut=int(self.settings.shutdown_deadline) + 10,
        )

    def jobs(self) -> dict[str, dict[str, Any]]:
        jobs = {i.label: self.ollama_job(i) for i in local_instances(self.settings)}
        # Started last; launchd has no ordering, and the health checks cover a backend
        # that comes up after the proxy.
        proxy = self.proxy_job()
        jobs[proxy["Label"]] = proxy
        return jobs

    def files(self) -> dict[str, bytes]:
        """File name -> content, for every file of the output directory."""
        jobs = self.jobs()
        files = {
            f"{label}.plist": plistlib.dumps(job, sort_keys=True) for label, job in jobs.items()
        }
        files["install.sh"] = self.install_script(list(jobs)).encode()
        return files

    def install_script(self, labels: list[str]) -> str:
        options = self.options
        workdir = os.path.relpath(self.workdir, os.path.abspath(self.out))
        source = self.portable(options.config).replace(WORKDIR + "/", "")
        mode = "daemon" if options.daemon else "agent"
        values = {
            "SOURCE": source,
            "WORKDIR_REL": shlex.quote(workdir),
            "LABELS": "\n".join(f"  {label}" for label in labels),
            "PROXY_PORT": str(self.settings.listen_port),
            "MODE": mode,
            "RUN_AS": shlex.quote(options.user or ""),
            "LOG_DIR": self.portable(options.log_dir),
        }
        # The script's template is a file of its own (a shell script reads best as one).
        script = resources.files("olbproxy.cli").joinpath("launchd_install.sh.in").read_text()
        for key, value in values.items():
            script = script.replace("{{" + key + "}}", value)
        return script

    def write(self) -> list[Path]:
        """Write the files; remove plists of jobs the config no longer has."""
        self.out.mkdir(parents=True, exist_ok=True)
        files = self.files()
        for stale in self.out.glob(f"{PREFIX}.*.plist"):
            if stale.name not in files:
                stale.unlink()
        written = []
        for name, content in files.items():
            path = self.out / name
            path.write_bytes(content)
            if name.endswith(".sh"):
                path.chmod(0o755)
            written.append(path)
        return written


# -- the command line ---------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    path = find_config(args.config)
    settings = config.load(path)
    options = LaunchdOptions(
        config=path,
        workdir=Path(args.workdir),
        ollama=args.ollama,
        olbproxy=args.olbproxy,
        log_dir=args.log_dir,
        daemon=args.daemon,
        user=args.user,
    )
    try:
        generator = Generator(settings, options, Path(args.out))
    except ValueError as exc:
        print(f"olbproxy launchd: {exc}", file=sys.stderr)
        return 2
    for path in generator.write():
        print(f"wrote {path}")
    for group in settings.groups:
        for url in group.endpoints:
            if local_address(url) is None:
                print(f"no job for {url} (group {group.name}): not on this Mac")
    print(f"install with: {Path(args.out) / 'install.sh'} install")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``olbproxy launchd generate`` to the command line."""
    parser = subparsers.add_parser("launchd", help="launchd jobs for the Mac (Ollama and proxy)")
    commands = parser.add_subparsers(dest="launchd_command", required=True)
    generate = commands.add_parser(
        "generate", help="write the plists and install.sh for the config's local instances"
    )
    generate.add_argument("--config", type=Path, default=None, help="YAML file (as for serve)")
    generate.add_argument("--out", default="launchd", help="output directory (launchd/)")
    generate.add_argument(
        "--workdir", default=".", help="the checkout the proxy runs in (default: here)"
    )
    generate.add_argument("--ollama", default=LaunchdOptions.ollama, help="the ollama binary")
    generate.add_argument(
        "--olbproxy", default=None, help="the olbproxy executable (WORKDIR/.venv/bin/olbproxy)"
    )
    generate.add_argument("--log-dir", default=LaunchdOptions.log_dir, help="where logs go")
    generate.add_argument(
        "--daemon", action="store_true", help="LaunchDaemons that start at boot (needs --user)"
    )
    generate.add_argument("--user", default=None, help="the user LaunchDaemons run as")
    generate.set_defaults(func=cmd_generate)
