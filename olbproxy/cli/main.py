"""The command line: ``olbproxy serve | check-config | demo | status | launchd | user | key``.

Each side of it lives in a module of this package: ``accounts.py`` (users, keys,
tokens) and ``audit.py`` (the audit trail), both on ``admin.py``; ``demo.py``,
``status.py``, ``launchd.py``. This one parses the arguments, finds the config, runs
serve and check-config, and turns every failure into one line: exit status 2 for usage
and configuration, 1 for what went wrong while running. ``olbproxy --debug ...``
shows the traceback instead.

Where the config is found without ``--config``: configfile.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from olbproxy import config, readiness
from olbproxy.cli import accounts, audit, launchd, status
from olbproxy.cli.configfile import find_config
from olbproxy.errors import ConfigError, ProxyError
from olbproxy.logs import Logs
from olbproxy.routing import Router
from olbproxy.settings import Settings


def routing_table(settings: Settings) -> str:
    lines = [
        f"listen {'https' if settings.tls else 'http'}://{settings.listen_host}:"
        f"{settings.listen_port}"
    ]
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
    auth = settings.auth
    if auth.enabled:
        groups = ", ".join(auth.default_groups) or "every group"
        lines.append(f"registration {auth.registration} (self-registered users get: {groups})")
    else:
        lines.append("authentication OFF: every request is served as an admin")
    store = settings.store
    where = "in memory" if store.backend == "memory" else f"MongoDB database {store.database!r}"
    lines.append(f"store {where}")
    return "\n".join(lines)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = config.load(find_config(args.path))
    readiness.check_serve(settings)  # the same checks serve makes before it starts
    print(f"{settings.source}: OK")
    print(routing_table(settings))
    for note in settings.notices:
        print(f"notice: {note}")
    for warning in Router(settings.groups).overlaps():
        print(f"warning: {warning}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from olbproxy.server import run, serve

    settings = config.load(find_config(args.config))
    readiness.check_serve(settings)
    logs = Logs(settings.log_level, settings.log_format, path=settings.log_file)
    logs.start()
    try:
        run(lambda: serve(settings))
    finally:
        logs.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from olbproxy.cli.demo import run_demo

    logs = Logs("INFO", "text")
    logs.start()
    try:
        return run_demo(port=args.port, host=args.host)
    finally:
        logs.stop()


EPILOG = """\
config file (when no --config is given): $OLBPROXY_CONFIG, else ./config/olbproxy.yaml,
else config/olbproxy.yaml of the checkout olbproxy is installed from.
exit status: 0 done, 1 failed while running, 2 usage or configuration error.

simulated Ollama backends on their own (tests, benchmarks):
  python -m olbproxy.simulator --ports 11435,11436 --tps 40   (--help for more)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olbproxy",
        description="Ollama-compatible load-balancing reverse proxy",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a failure (before COMMAND)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, default=None, help="YAML file (see below)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config",
        help="validate a config as serve would, and print the routing table",
        description="Validate a config exactly as serve does before it starts (the file, "
        "the environment and .env.local beside it: JWT_SECRET, MONGODB_URI, TLS files), "
        "then print the routing table. Exit status 2 on the first error.",
    )
    check.add_argument(
        "path", type=Path, nargs="?", default=None, help="YAML file (default: as for serve)"
    )
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser(
        "demo",
        help="run the proxy in front of simulated Ollama backends",
        description="Five simulated Ollama instances in the seed's layout, the proxy in "
        "front of them, a demo user; everything in memory, nothing written to disk.",
    )
    demo.add_argument("--port", type=int, default=11434, help="the proxy's port (11434)")
    demo.add_argument(
        "--host", default="127.0.0.1", help="the proxy's address (127.0.0.1: this machine only)"
    )
    demo.set_defaults(func=cmd_demo)
    accounts.register(sub)
    audit.register(sub)
    status.register(sub)
    launchd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"olbproxy: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except ProxyError as exc:  # the port is taken, MongoDB does not answer, a refusal
        if args.debug:
            raise
        print(f"olbproxy: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the shell prompt then starts on a line of its own
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"olbproxy: unexpected error: {type(exc).__name__}: {exc} "
            f"(olbproxy --debug {args.command} ... shows the traceback)",
            file=sys.stderr,
        )
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
