"""The command line: ``olbproxy serve | check-config | demo | status | launchd | user | key``.

Each side of it lives in a module of this package: ``admin.py`` (users, keys, tokens),
``demo.py``, ``status.py``, ``launchd.py``; this one parses the arguments, runs serve and
check-config, and turns configuration errors into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from olbproxy import config
from olbproxy.cli import admin, launchd, status
from olbproxy.errors import ConfigError
from olbproxy.routing import Router
from olbproxy.settings import Settings


def default_config_path() -> Path:
    if env := os.environ.get("OLBPROXY_CONFIG"):
        return Path(env)
    local = Path("config/olbproxy.yaml")
    return local if local.is_file() else config.DEFAULT_CONFIG


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def routing_table(settings: Settings) -> str:
    lines = [f"listen {settings.listen_host}:{settings.listen_port}"]
    for group in settings.groups:
        lines.append(
            f"group {group.name}: models {', '.join(group.models)}"
            f"{'  (catch-all)' if group.catch_all else ''}"
        )
        lines.append(
            f"  {group.slots} slot(s) per instance, queue {group.queue_size} "
            f"(wait up to {group.queue_timeout:g}s), first byte {group.first_byte_timeout:g}s, "
            f"idle {group.idle_timeout:g}s, model store {group.model_store}"
        )
        pins = ", ".join(f"{k}={v}" for k, v in group.pin_options)
        lines.append(f"  placement {group.placement}" + (f", pinned {pins}" if pins else ""))
        lines.extend(f"  -> {url}" for url in group.endpoints)
    if not any(g.catch_all for g in settings.groups):
        lines.append("models no group lists: 404 model not found (add a group with models: ['*'])")
    return "\n".join(lines)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = config.load(args.path)
    print(f"{settings.source}: OK")
    print(routing_table(settings))
    for note in settings.notices:
        print(f"notice: {note}")
    for warning in Router(settings.groups).overlaps():
        print(f"warning: {warning}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from olbproxy.server import run, serve

    settings = config.load(args.config)
    if settings.auth.enabled:
        config.check_secret(settings)
    setup_logging(settings.log_level)
    run(lambda: serve(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from olbproxy.cli.demo import run_demo

    setup_logging("INFO")
    return run_demo(port=args.port, host=args.host)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olbproxy", description="Ollama-compatible load-balancing reverse proxy"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, default=None, help="YAML file (config/olbproxy.yaml)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and print the routing table")
    check.add_argument("path", type=Path)
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="run the proxy in front of simulated Ollama backends")
    demo.add_argument("--port", type=int, default=11434)
    demo.add_argument("--host", default="127.0.0.1")
    demo.set_defaults(func=cmd_demo)
    admin.register(sub)
    status.register(sub)
    launchd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "config", "unset") is None:
        args.config = default_config_path()
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"olbproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
