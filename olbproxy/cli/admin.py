"""The admin commands: ``olbproxy user | key | token``.

They work on the store the config names (MongoDB), so they run beside a serving proxy,
which sees their changes within ``auth.cache_seconds``. Passwords never come from argv
(it shows in ``ps`` and shell history): from a prompt on a terminal, else one line of
stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from olbproxy import config
from olbproxy.errors import BadRequest, ConfigError, ProxyError
from olbproxy.settings import Settings

if TYPE_CHECKING:  # the admin commands load these when they run
    from olbproxy.auth.accounts import Accounts
    from olbproxy.auth.principal import Role
    from olbproxy.store import Store

Operation = Callable[["Accounts", "Store", Settings], Awaitable[int]]


def read_password(prompt: str, stdin: TextIO | None = None) -> str:
    """From a prompt (twice) on a terminal, else the first line of stdin."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise BadRequest("the two passwords differ")
        return first
    return stdin.readline().removesuffix("\n").removesuffix("\r")


def admin(operation: Operation) -> Callable[[argparse.Namespace], int]:
    """Run ``operation`` against the store the config names; errors become one line."""

    def command(args: argparse.Namespace) -> int:
        from olbproxy.auth.accounts import Accounts
        from olbproxy.auth.tokens import Tokens
        from olbproxy.store.backends import open_store

        settings = config.load(args.config)
        if settings.store.backend == "memory":
            raise ConfigError(
                f"{settings.source}: store.backend: memory lives inside one proxy process; "
                "admin commands need store.backend: mongodb"
            )
        store = open_store(settings)
        accounts = Accounts(settings.auth, store, Tokens(settings.auth))

        async def run() -> int:
            try:
                return await operation(accounts, store, settings)
            finally:
                await store.close()

        try:
            return asyncio.run(run())
        except ProxyError as exc:
            if isinstance(exc, ConfigError):
                raise
            print(f"olbproxy: {exc.message}", file=sys.stderr)
            return 1

    return command


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _groups(groups: frozenset[str] | None) -> str:
    return ",".join(sorted(groups)) if groups is not None else "(all)"


def cmd_user_add(args: argparse.Namespace) -> int:
    from olbproxy.auth.accounts import parse_groups

    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        password = read_password(f"Password for {args.name}: ")
        role: Role = "admin" if args.admin or args.role == "admin" else "user"
        user = await accounts.add_user(
            args.name, password, role=role, groups=parse_groups(args.groups)
        )
        print(f"added {user.role} {user.username} (groups {_groups(user.groups)})")
        return 0

    return admin(op)(args)


def cmd_user_list(args: argparse.Namespace) -> int:
    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        print(f"{'USERNAME':24} {'ROLE':6} {'GROUPS':16} {'STATE':8} {'CREATED':16} LAST LOGIN")
        for u in await store.users.list():
            state = "disabled" if u.disabled else "active"
            print(
                f"{u.username:24} {u.role:6} {_groups(u.groups):16} {state:8} "
                f"{_when(u.created_at):16} {_when(u.last_login_at)}"
            )
        return 0

    return admin(op)(args)


def cmd_user_disable(args: argparse.Namespace) -> int:
    disabled = args.command_name == "disable"

    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        user = await accounts.change_user(args.name, {"disabled": disabled})
        print(
            f"{user.username} is {'disabled' if disabled else 'enabled'}; a running proxy "
            f"notices within {settings.auth.cache_seconds:g}s"
        )
        return 0

    return admin(op)(args)


def cmd_user_passwd(args: argparse.Namespace) -> int:
    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        user = await accounts.set_password(
            args.name, read_password(f"New password for {args.name}: ")
        )
        print(f"password of {user.username} changed")
        return 0

    return admin(op)(args)


def cmd_user_import(args: argparse.Namespace) -> int:
    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        from olbproxy.store.mongo import read_seed_users

        uri = args.from_uri or settings.store.mongodb_uri
        assert uri, "open_store has required a MongoDB URI"
        seed = await read_seed_users(
            uri,
            args.from_db,
            args.collection,
            username_field=args.username_field,
            password_field=args.password_field,
            seconds=settings.store.timeout,
        )
        results = await accounts.import_seed_users(seed)
        for item in results:
            print(f"{item.username}: {item.outcome}")
        done = sum(1 for r in results if r.outcome == "imported")
        print(f"imported {done} of {len(results)} users from {args.from_db}.{args.collection}")
        return 0

    return admin(op)(args)


def cmd_key_create(args: argparse.Namespace) -> int:
    from olbproxy.auth.accounts import parse_groups

    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        record, key = await accounts.create_key(
            args.name, label=args.label, front_end=args.front_end, groups=parse_groups(args.groups)
        )
        print(key)
        kind = "trusted front-end key" if record.front_end else "API key"
        print(
            f"{kind} {record.id} for {args.name}: shown once, store it now. "
            f"Revoke with: olbproxy key revoke {record.id}",
            file=sys.stderr,
        )
        return 0

    return admin(op)(args)


def cmd_key_list(args: argparse.Namespace) -> int:
    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        owner = (await accounts.user(args.name)).id if args.name else None
        names = {u.id: u.username for u in await store.users.list()}
        print(
            f"{'ID':12} {'USER':20} {'LABEL':20} {'FRONT-END':9} {'GROUPS':12} "
            f"{'CREATED':16} REVOKED"
        )
        for k in await store.keys.list(owner):
            print(
                f"{k.id:12} {names.get(k.user_id, k.user_id):20} {k.label:20} "
                f"{'yes' if k.front_end else 'no':9} "
                f"{_groups(k.groups) if k.groups is not None else '(owner)':12} "
                f"{_when(k.created_at):16} {_when(k.revoked_at)}"
            )
        return 0

    return admin(op)(args)


def cmd_key_revoke(args: argparse.Namespace) -> int:
    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        await accounts.revoke_key(args.id)
        print(
            f"revoked {args.id}; a running proxy refuses it within {settings.auth.cache_seconds:g}s"
        )
        return 0

    return admin(op)(args)


def cmd_token_issue(args: argparse.Namespace) -> int:
    async def op(accounts: Accounts, store: Store, settings: Settings) -> int:
        config.check_secret(settings)
        token, expires = await accounts.issue_token(args.name, args.ttl)
        print(token)
        print(f"expires {expires.isoformat()}", file=sys.stderr)
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
    add.add_argument("--groups", help="comma-separated model groups (default: all)")
    add.set_defaults(func=cmd_user_add)
    user.add_parser("list", parents=[common], help="list users").set_defaults(func=cmd_user_list)
    for name in ("disable", "enable"):
        cmd = user.add_parser(name, parents=[common], help=f"{name} a user")
        cmd.add_argument("name")
        cmd.set_defaults(func=cmd_user_disable, command_name=name)
    passwd = user.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("name")
    passwd.set_defaults(func=cmd_user_passwd)
    imp = user.add_parser(
        "import", parents=[common], help="bring the seed app's users over, keeping their passwords"
    )
    imp.add_argument("--from-uri", help="the seed's MongoDB URI (default: the store's)")
    imp.add_argument("--from-db", default="gpt")
    imp.add_argument("--collection", default="users")
    imp.add_argument("--username-field", default="username")
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
