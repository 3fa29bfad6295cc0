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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from olbproxy import config
from olbproxy.config import GroupSettings, Settings

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
        script = INSTALL_SCRIPT
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


INSTALL_SCRIPT = r"""#!/bin/bash
# Generated by `olbproxy launchd generate` from {{SOURCE}}: do not edit.
# Change the config and generate again, so the ports stay those the proxy uses.
#
#   install.sh install     copy the jobs to launchd and start them (again)
#   install.sh uninstall   stop them and remove them
#   install.sh status      show whether each job runs
#
# These are {{MODE}} jobs. Agents run in the logged-in user's GUI session (gui/UID),
# from ~/Library/LaunchAgents; daemons (generate --daemon --user NAME) run from boot
# in the system domain, from /Library/LaunchDaemons, as NAME (installing needs sudo).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKDIR="$(cd "$HERE"/{{WORKDIR_REL}} && pwd)"
PREFIX="com.olbproxy"
LABELS=(
{{LABELS}}
)
PROXY_PORT={{PROXY_PORT}}
MODE={{MODE}}
RUN_AS={{RUN_AS}}

if [[ $MODE == daemon ]]; then
  TARGET=/Library/LaunchDaemons
  DOMAIN=system
  HOME_DIR="$(dscl . -read "/Users/$RUN_AS" NFSHomeDirectory | awk '{print $2}')"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  OWNER=(-o root -g wheel)
else
  TARGET="$HOME/Library/LaunchAgents"
  DOMAIN="gui/$(id -u)"
  HOME_DIR="$HOME"
  SUDO=()
  OWNER=()
fi
LOG_DIR="{{LOG_DIR}}"
LOG_DIR="${LOG_DIR//@HOME@/$HOME_DIR}"
LOG_DIR="${LOG_DIR//@WORKDIR@/$WORKDIR}"

run() { ${SUDO[@]+"${SUDO[@]}"} "$@"; }

sed_escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

# A plist with this Mac's paths in place of the placeholders.
render() {
  sed -e "s|@WORKDIR@|$(sed_escape "$WORKDIR")|g" -e "s|@HOME@|$(sed_escape "$HOME_DIR")|g" \
    "$HERE/$1.plist"
}

known() {
  local label
  for label in "${LABELS[@]}"; do [[ $label == "$1" ]] && return 0; done
  return 1
}

# Ollama.app serves on 11434 too: the proxy cannot start while it holds the port.
check_port() {
  local holder
  holder="$(lsof -nP -iTCP:"$PROXY_PORT" -sTCP:LISTEN -Fc 2>/dev/null |
    sed -n 's/^c//p' | head -n 1)" || true
  if [[ $holder == [Oo]llama* ]] && ! launchctl print "$DOMAIN/$PREFIX.proxy" >/dev/null 2>&1; then
    echo "port $PROXY_PORT is held by '$holder' (Ollama.app?): quit it and remove it from" >&2
    echo "System Settings > General > Login Items, or move it to another port with" >&2
    echo "  launchctl setenv OLLAMA_HOST 127.0.0.1:11400  (then restart Ollama.app)" >&2
    exit 1
  fi
}

bootstrap() {
  local tries
  # bootout finishes asynchronously; a bootstrap right after it may fail once or twice.
  for tries in 1 2 3 4 5; do
    run launchctl bootstrap "$DOMAIN" "$TARGET/$1.plist" && return 0
    sleep 1
  done
  echo "launchctl bootstrap $DOMAIN $TARGET/$1.plist failed" >&2
  return 1
}

remove() {
  run launchctl bootout "$DOMAIN/$1" 2>/dev/null || true
  run rm -f "$TARGET/$1.plist"
}

do_install() {
  local label plist tmp
  check_port
  run mkdir -p "$TARGET"
  mkdir -p "$LOG_DIR" 2>/dev/null || run mkdir -p "$LOG_DIR"
  if [[ $MODE == daemon ]]; then run chown "$RUN_AS" "$LOG_DIR"; fi
  # Jobs of an earlier config (a port that is gone) go first.
  for plist in "$TARGET/$PREFIX".*.plist; do
    [[ -e $plist ]] || continue
    label="$(basename "$plist" .plist)"
    if ! known "$label"; then
      remove "$label"
      echo "removed $label (no longer in the config)"
    fi
  done
  for label in "${LABELS[@]}"; do
    tmp="$(mktemp)"
    render "$label" >"$tmp"
    plutil -lint -s "$tmp"
    run install ${OWNER[@]+"${OWNER[@]}"} -m 644 "$tmp" "$TARGET/$label.plist"
    rm -f "$tmp"
    run launchctl bootout "$DOMAIN/$label" 2>/dev/null || true
    bootstrap "$label"
    echo "started $label"
  done
  echo "logs: $LOG_DIR"
}

do_uninstall() {
  local i
  # The proxy (last in the list) stops first, so no request meets a stopped instance.
  for ((i = ${#LABELS[@]} - 1; i >= 0; i--)); do
    remove "${LABELS[i]}"
    echo "removed ${LABELS[i]}"
  done
}

do_status() {
  local label info
  for label in "${LABELS[@]}"; do
    if info="$(launchctl print "$DOMAIN/$label" 2>/dev/null)"; then
      printf '%-28s %s\n' "$label" "$(printf '%s\n' "$info" |
        awk -F' = ' '/^\t(state|pid|last exit code) = /{printf "%s=%s ", $1, $2}' | tr -d '\t')"
    else
      printf '%-28s %s\n' "$label" "not loaded"
    fi
  done
}

case "${1:-}" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  status) do_status ;;
  *)
    echo "usage: $0 install|uninstall|status" >&2
    exit 2
    ;;
esac
"""


# -- the command line ---------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    options = LaunchdOptions(
        config=Path(args.config),
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
    generate.add_argument("--config", default=None, help="YAML file (config/olbproxy.yaml)")
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
