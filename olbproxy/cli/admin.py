"""What every admin command (``olbproxy user | key | token | audit``) stands on.

The commands live in accounts.py (users, API keys, login tokens) and audit.py (the
trail); this module gives them the config, the store and the trail they work with.

They work on the store the config names (MongoDB), so they run beside a serving proxy,
which sees their changes within ``auth.cache_seconds``. Each says on stderr which config
and which database it used (stdout stays for what scripts read: keys, tokens, tables).
Passwords never come from argv (it shows in ``ps`` and shell history): from a prompt on
a terminal, else one line of stdin, read before the database is touched. Every change
goes to the audit trail (audit.py) as the OS user who ran the command.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from olbproxy import config
from olbproxy.cli.configfile import find_config
from olbproxy.errors import BadRequest, ConfigError
from olbproxy.settings import Settings

if TYPE_CHECKING:  # the admin commands load these when they run
    from olbproxy.audit import Actor, AuditTrail
    from olbproxy.auth.accounts import Accounts
    from olbproxy.store import Store


@dataclass
class Admin:
    """What an admin command works with: the accounts over the store, and the trail."""

    settings: Settings
    store: Store
    accounts: Accounts
    trail: AuditTrail
    actor: Actor

    def audit(self, action: str, target: str, *, user: str | None = None, **detail: object) -> None:
        self.trail.record(self.actor, action, target, user=user, **detail)


Operation = Callable[[Admin], Awaitable[int]]


def read_password(prompt: str, stdin: TextIO | None = None) -> str:
    """From a prompt (twice) on a terminal, else the first line of stdin."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        try:
            first = getpass.getpass(prompt)
            again = getpass.getpass("Again: ")
        except EOFError:  # Ctrl-D at the prompt
            print(file=sys.stderr)
            raise BadRequest("no password given") from None
        if again != first:
            raise BadRequest("the two passwords differ")
        return first
    return stdin.readline().removesuffix("\n").removesuffix("\r")


def where(settings: Settings) -> str:
    """``config X, MongoDB database 'gpt' on host:port`` (never the URI's credentials)."""
    hosts = urlsplit(settings.store.mongodb_uri or "").netloc.rpartition("@")[2] or "?"
    return f"config {settings.source}, MongoDB database {settings.store.database!r} on {hosts}"


def admin_settings(args: argparse.Namespace) -> Settings:
    """The config an admin command works on; it must name a database."""
    settings = config.load(find_config(args.config))
    if settings.store.backend == "memory":
        raise ConfigError(
            f"{settings.source}: store.backend: memory lives inside one proxy process; "
            "admin commands need store.backend: mongodb"
        )
    return settings


def run_admin(settings: Settings, operation: Operation) -> int:
    """Run ``operation`` against the store ``settings`` name; errors reach main() as they
    are, which prints them as one line."""
    from olbproxy.audit import AuditTrail, cli_actor
    from olbproxy.auth.accounts import Accounts
    from olbproxy.auth.tokens import Tokens
    from olbproxy.store.backends import open_store

    store = open_store(settings)
    print(f"olbproxy: {where(settings)}", file=sys.stderr)
    context = Admin(
        settings=settings,
        store=store,
        accounts=Accounts(settings.auth, store, Tokens(settings.auth)),
        trail=AuditTrail(store, timeout=settings.store.timeout),
        actor=cli_actor(),
    )

    async def run() -> int:
        try:
            return await operation(context)
        finally:
            await context.trail.close()
            await store.close()

    # Warnings the store logs for a server (MongoDB unreachable) would repeat the one
    # line main() prints; errors (an audit entry not stored) still show.
    quiet = logging.StreamHandler(sys.stderr)
    quiet.setLevel(logging.ERROR)
    quiet.setFormatter(logging.Formatter("olbproxy: %(message)s"))
    root = logging.getLogger()
    root.addHandler(quiet)
    try:
        return asyncio.run(run())
    finally:
        root.removeHandler(quiet)


def admin(operation: Operation) -> Callable[[argparse.Namespace], int]:
    """A command that only needs the store: load the config, then run ``operation``."""
    return lambda args: run_admin(admin_settings(args), operation)


def show_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def show_groups(groups: frozenset[str] | None) -> str:
    return ",".join(sorted(groups)) if groups is not None else "(all)"


def known_groups(settings: Settings, text: str | None) -> frozenset[str] | None:
    """``--groups`` parsed, refusing names the config has no group for."""
    from olbproxy.auth.accounts import parse_groups

    groups = parse_groups(text)
    names = [g.name for g in settings.groups]
    unknown = sorted((groups or frozenset()) - set(names))
    if unknown:
        raise ConfigError(
            f"--groups: no group named {', '.join(map(repr, unknown))} in {settings.source} "
            f"(groups: {', '.join(names) or 'none'})"
        )
    return groups


def config_parent() -> argparse.ArgumentParser:
    """The ``--config`` every admin command takes, as a parent for its parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, help="YAML file (as for serve)")
    return common
