"""The account commands: ``olbproxy user | key | token``.

Users (add, list, disable and enable, groups, passwd, import from the seed app), their
API keys (create, list, revoke) and login tokens (issue). Each runs through admin.py
against the store the config names and writes its change to the audit trail.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from olbproxy import readiness
from olbproxy.cli.admin import (
    Admin,
    admin,
    admin_settings,
    config_parent,
    known_groups,
    read_password,
    run_admin,
    show_groups,
    show_time,
)

if TYPE_CHECKING:
    from olbproxy.auth.principal import Role


def cmd_user_add(args: argparse.Namespace) -> int:
    settings = admin_settings(args)
    groups = known_groups(settings, args.groups)
    # Asked before connecting: Ctrl-D at the prompt costs no database round trip.
    password = read_password(f"Password for {args.name}: ")

    async def op(ctx: Admin) -> int:
        role: Role = "admin" if args.admin or args.role == "admin" else "user"
        user = await ctx.accounts.add_user(args.name, password, role=role, groups=groups)
        ctx.audit(
            "user.add", user.username, user=user.username, role=role, groups=show_groups(groups)
        )
        print(f"added {user.role} {user.username} (groups {show_groups(user.groups)})")
        return 0

    return run_admin(settings, op)


def cmd_user_list(args: argparse.Namespace) -> int:
    async def op(ctx: Admin) -> int:
        users = await ctx.store.users.list()  # before the header: a failure prints one line
        print(f"{'USERNAME':24} {'ROLE':6} {'GROUPS':16} {'STATE':8} {'CREATED':16} LAST LOGIN")
        for u in users:
            state = "disabled" if u.disabled else "active"
            print(
                f"{u.username:24} {u.role:6} {show_groups(u.groups):16} {state:8} "
                f"{show_time(u.created_at):16} {show_time(u.last_login_at)}"
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
        ctx.audit("user.groups", user.username, user=user.username, groups=show_groups(groups))
        print(
            f"{user.username} may use groups {show_groups(user.groups)}; a running proxy "
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
            groups=None if groups is None else show_groups(groups),
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
                f"{show_groups(k.groups) if k.groups is not None else '(owner)':12} "
                f"{show_time(k.created_at):16} {show_time(k.revoked_at)}"
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``olbproxy user``, ``key`` and ``token`` to the command line."""
    common = config_parent()

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
