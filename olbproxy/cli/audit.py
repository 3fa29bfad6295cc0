"""``olbproxy audit``: who changed users, keys, groups and models, when, from where.

It reads the trail olbproxy/audit.py writes (the admin commands' changes and the admin
API's), through admin.py like the other admin commands.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta

from olbproxy.cli.admin import Admin, admin, config_parent, show_time

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
                f"{show_time(e.at.astimezone(UTC)):16} {e.actor:16} {e.via:6} {e.address:16} "
                f"{e.action:12} {e.target}{'  ' + detail if detail else ''}"
            )
        if not entries:
            print("(no admin actions recorded in that window)", file=sys.stderr)
        return 0

    return admin(op)(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``olbproxy audit`` to the command line."""
    common = config_parent()
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
