"""The admin commands: ``olbproxy user | key | token | audit``.

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
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from olbproxy import config, readiness
from olbproxy.cli.configfile import find_config
from olbproxy.errors import BadRequest, ConfigError
from olbproxy.settings import Settings

if TYPE_CHECKING:  # the admin commands load these when they run
    from olbproxy.audit import Actor, AuditTrail
    from olbproxy.auth.accounts import Accounts
    from olbproxy.auth.principal import Role
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


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _groups(groups: frozenset[str] | None) -> str:
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


def cmd_user_add(args: argparse.Namespace) -> int:
    settings = admin_settings(args)
    groups = known_groups(settings, args.groups)
    # Asked before connecting: Ctrl-D at the prompt costs no database round trip.
    password = read_password(f"Password for {args.name}: ")

    async def op(ctx: Admin) -> int:
        role: Role = "admin" if args.admin or args.role == "admin" else "user"
        user = await ctx.accounts.add_user(args.name, password, role=role, groups=groups)
        ctx.audit("user.add", user.username, user=user.username, role=role, groups=_groups(groups))
        print(f"added {user.role} {user.username} (groups {_groups(user.groups)})")
        return 0

    return run_admin(settings, op)


def cmd_user_list(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        users = await ctx.store.users.list()  # before the header: a failure prints one line
        print(f"{'USERNAME':24} {'ROLE':6} {'GROUPS':16} {'STATE':8} {'CREATED':16} LAST LOGIN")
        for u in users:
            state = "disabled" if u.disabled else "active"
            print(
                f"{u.username:24} {u.role:6} {_groups(u.groups):16} {state:8} "
                f"{_when(u.created_at):16} {_when(u.last_login_at)}"
            )
        return 0

    return admin(op)(args)


def cmd_user_disable(args: argparse.Namespace) -> int:
    disabled = args.command_name == "disable"

    async def op(ctx: Admin) -> int:
        user = await ctx.accounts.change_user(args.name, {"disabled": disabled})
        ctx.audit(f"user.{args.command_name}", user.username, user=user.username)
        print(
            f"{user.username} is {'disabled' if disabled else 'enabled'}; a running proxy "
            f"notices within {ctx.settings.auth.cache_seconds:g}s"
        )
        return 0

    return admin(op)(args)


def cmd_user_groups(args: argparse.Namespace) -> int:
    settings = admin_settings(args)
    groups = None if args.groups == "all" else known_groups(settings, args.groups)

    async def op(ctx: Admin) -> int:
        user = await ctx.accounts.change_user(args.name, {"groups": groups})
        ctx.audit("user.groups", user.username, user=user.username, groups=_groups(groups))
        print(
            f"{user.username} may use groups {_groups(user.groups)}; a running proxy "
            f"notices within {ctx.settings.auth.cache_seconds:g}s"
        )
        return 0

    return run_admin(settings, op)


def cmd_user_passwd(args: argparse.Namespace) -> int:
    settings = admin_settings(args)
    password = read_password(f"New password for {args.name}: ")

    async def op(ctx: Admin) -> int:
        user = await ctx.accounts.set_password(args.name, password)
        ctx.audit("user.passwd", user.username, user=user.username)
        print(f"password of {user.username} changed")
        return 0

    return run_admin(settings, op)


def cmd_user_import(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        from olbproxy.store.mongo import read_seed_users

        uri = args.from_uri or ctx.settings.store.mongodb_uri
        assert uri, "open_store has required a MongoDB URI"
        seed = await read_seed_users(
            uri,
            args.from_db,
            args.collection,
            username_field=args.username_field,
            password_field=args.password_field,
            seconds=ctx.settings.store.timeout,
        )
        results = await ctx.accounts.import_seed_users(seed)
        for item in results:
            print(f"{item.username}: {item.outcome}")
        done = sum(1 for r in results if r.outcome == "imported")
        source = f"{args.from_db}.{args.collection}"
        print(f"imported {done} of {len(results)} users from {source}")
        if done:
            ctx.audit("user.import", source, imported=done)
        return 0

    return admin(op)(args)


def cmd_key_create(args: argparse.Namespace) -> int:
    settings = admin_settings(args)
    groups = known_groups(settings, args.groups)

    async def op(ctx: Admin) -> int:
        record, key = await ctx.accounts.create_key(
            args.name, label=args.label, front_end=args.front_end, groups=groups
        )
        ctx.audit(
            "key.create",
            record.id,
            user=args.name,
            label=record.label or None,
            front_end=record.front_end or None,
            groups=None if groups is None else _groups(groups),
        )
        print(key)
        kind = "trusted front-end key" if record.front_end else "API key"
        print(
            f"{kind} {record.id} for {args.name}: shown once, store it now. "
            f"Revoke with: olbproxy key revoke {record.id}",
            file=sys.stderr,
        )
        return 0

    return run_admin(settings, op)


def cmd_key_list(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        owner = (await ctx.accounts.user(args.name)).id if args.name else None
        names = {u.id: u.username for u in await ctx.store.users.list()}
        keys = await ctx.store.keys.list(owner)
        print(
            f"{'ID':12} {'USER':20} {'LABEL':20} {'FRONT-END':9} {'GROUPS':12} "
            f"{'CREATED':16} REVOKED"
        )
        for k in keys:
            print(
                f"{k.id:12} {names.get(k.user_id, k.user_id):20} {k.label:20} "
                f"{'yes' if k.front_end else 'no':9} "
                f"{_groups(k.groups) if k.groups is not None else '(owner)':12} "
                f"{_when(k.created_at):16} {_when(k.revoked_at)}"
            )
        return 0

    return admin(op)(args)


def cmd_key_revoke(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        record = await ctx.store.keys.get(args.id)
        await ctx.accounts.revoke_key(args.id)
        owner = await ctx.store.users.get(record.user_id) if record else None
        ctx.audit("key.revoke", args.id, user=owner.username if owner else None)
        print(
            f"revoked {args.id}; a running proxy refuses it within "
            f"{ctx.settings.auth.cache_seconds:g}s"
        )
        return 0

    return admin(op)(args)


def cmd_token_issue(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        readiness.check_secret(ctx.settings)
        token, expires = await ctx.accounts.issue_token(args.name, args.ttl)
        ctx.audit("token.issue", args.name, user=args.name, expires=expires.isoformat())
        print(token)
        print(f"expires {expires.isoformat()}", file=sys.stderr)
        return 0

    return admin(op)(args)


_SPAN = re.compile(r"(\d+)([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str) -> datetime:
    """``30m``, ``24h``, ``7d`` ago, or a date/time (``2026-12-01``, ``2026-12-01T09:00``,
    UTC unless it says otherwise)."""
    if match := _SPAN.fullmatch(text.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a span like 30m, 24h, 7d or a date like 2026-12-01"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        from olbproxy.auth.accounts import normalise_username, username_key

        user = username_key(normalise_username(args.user)) if args.user else None
        entries = await ctx.store.audit.list(since=args.since, user=user, limit=args.limit)
        entries.reverse()  # the newest `limit`, printed oldest first, like a log
        if args.json:
            for e in entries:
                line = {
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "via": e.via,
                    "address": e.address,
                    "action": e.action,
                    "target": e.target,
                    "detail": dict(e.detail),
                }
                print(json.dumps(line, ensure_ascii=False, default=str))
            return 0
        print(f"{'TIME (UTC)':16} {'ACTOR':16} {'VIA':6} {'FROM':16} {'ACTION':12} TARGET")
        for e in entries:
            detail = " ".join(f"{k}={v}" for k, v in e.detail.items())
            print(
                f"{_when(e.at.astimezone(UTC)):16} {e.actor:16} {e.via:6} {e.address:16} "
                f"{e.action:12} {e.target}{'  ' + detail if detail else ''}"
            )
        if not entries:
            print("(no admin actions recorded in that window)", file=sys.stderr)
        return 0

    return admin(op)(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, help="YAML file (as for serve)")

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", parents=[common], help="add a user (password: prompt or stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="same as --role admin")
    add.add_argument("--role", choices=("user", "admin"), default="user")
    add.add_argument("--groups", help="comma-separated groups of the config (default: all)")
    add.set_defaults(func=cmd_user_add)
    user.add_parser("list", parents=[common], help="list users").set_defaults(func=cmd_user_list)
    for name in ("disable", "enable"):
        cmd = user.add_parser(name, parents=[common], help=f"{name} a user")
        cmd.add_argument("name")
        cmd.set_defaults(func=cmd_user_disable, command_name=name)
    groups = user.add_parser("groups", parents=[common], help="set the groups a user may use")
    groups.add_argument("name")
    groups.add_argument("groups", help="comma-separated groups of the config, or 'all'")
    groups.set_defaults(func=cmd_user_groups)
    passwd = user.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_user_passwd)
    imp = user.add_parser(
        "import", parents=[common], help="bring the seed app's users over, keeping their passwords"
    )
    imp.add_argument("--from-uri", help="the seed's MongoDB URI (default: the store's)")
    imp.add_argument("--from-db", default="gpt", help="the seed's database (gpt)")
    imp.add_argument("--collection", default="users", help="the seed's users collection (users)")
    imp.add_argument("--username-field", default="username", help="field with the name")
    imp.add_argument("--password-field", default="password", help="field with the bcrypt hash")
    imp.set_defaults(func=cmd_user_import)

    key = sub.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    create = key.add_parser("create", parents=[common], help="create an API key for a user")
    create.add_argument("name", help="the user the key acts as")
    create.add_argument("--label", default="", help="what the key is for, e.g. open-webui")
    create.add_argument(
        "--front-end",
        action="store_true",
        help="trust X-OpenWebUI-User-* headers sent with this key (Open WebUI)",
    )
    create.add_argument("--groups", help="restrict the key to these groups (comma-separated)")
    create.set_defaults(func=cmd_key_create)
    listing = key.add_parser("list", parents=[common], help="list API keys")
    listing.add_argument("name", nargs="?", help="only this user's keys")
    listing.set_defaults(func=cmd_key_list)
    revoke = key.add_parser("revoke", parents=[common], help="revoke an API key by its id")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_key_revoke)

    token = sub.add_parser("token", help="login tokens").add_subparsers(
        dest="action", required=True
    )
    issue = token.add_parser("issue", parents=[common], help="issue a token for a user")
    issue.add_argument("name")
    issue.add_argument("--ttl", type=float, default=None, help="seconds (default: auth.token_ttl)")
    issue.set_defaults(func=cmd_token_issue)

    audit = sub.add_parser(
        "audit",
        parents=[common],
        help="admin actions: who changed users, keys, groups and models, when, from where",
    )
    audit.add_argument(
        "--since", type=parse_since, default=None, help="30m, 24h, 7d, or a date (UTC)"
    )
    audit.add_argument("--user", help="only actions by or on this user")
    audit.add_argument("--limit", type=int, default=100, help="at most this many, newest (100)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=cmd_audit)
