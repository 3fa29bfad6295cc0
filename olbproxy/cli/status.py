"""``olbproxy status``: ask a running proxy for its status and print it as a table."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from olbproxy import config
from olbproxy.cli.configfile import find_config
from olbproxy.settings import Settings
from olbproxy.status import PATH


def render(status: Mapping[str, Any]) -> str:
    """The status as a table: one line per group, then one per backend of it."""
    header: tuple[str, ...] = ("GROUP", "BACKEND", "HEALTH", "IN-FLIGHT", "QUEUE", "LOADED")
    rows: list[tuple[tuple[str, ...], str | None]] = [(header, None)]
    for group in status.get("groups", []):
        up = f"{group['healthy']}/{len(group['backends'])} up"
        in_flight = f"{group['in_flight']}/{group['slots']}"
        queue = f"{group['waiting']}/{group['queue_size']}"
        rows.append(((group["name"], "", up, in_flight, queue, ", ".join(group["models"])), None))
        for b in group["backends"]:
            health = " ".join(filter(None, ("up" if b["healthy"] else "DOWN", b["version"])))
            loaded = ", ".join(b["loaded"]) or "-"
            line = ("", b["label"], health, f"{b['in_flight']}/{b['slots']}", "", loaded)
            rows.append((line, b["last_error"]))
    widths = [max(len(row[i]) for row, _ in rows) for i in range(len(header))]
    lines = []
    for row, last_error in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if last_error:
            lines.append(" " * (widths[0] + 2) + f"last error: {last_error}")
    backlog = status.get("persistence")
    if backlog is None:
        lines.append("persistence backlog: not reported (no recorder)")
    else:
        parts = ", ".join(f"{stage} {count:g}" for stage, count in backlog.items()) or "empty"
        lines.append(f"persistence backlog: {parts}")
    return "\n".join(lines)


def default_url(settings: Settings) -> str:
    host = settings.listen_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if settings.tls else 'http'}://{host}:{settings.listen_port}"


def own_certificate(settings: Settings) -> ssl.SSLContext | None:
    """Trust exactly the proxy's own certificate (often self-signed), whatever name it
    carries: the URL is the config's own listener, reached as 127.0.0.1."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=settings.tls_cert)
    context.check_hostname = False
    return context


def fetch(
    url: str, token: str | None, *, timeout: float = 30.0, context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + PATH, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        data: dict[str, Any] = json.load(response)
    return data


def cmd_status(args: argparse.Namespace) -> int:
    context = None
    if args.url:
        url = args.url
    else:
        settings = config.load(find_config(args.config))
        url, context = default_url(settings), own_certificate(settings)
    token = args.token or os.environ.get("OLBPROXY_TOKEN")
    try:
        status = fetch(url, token, context=context)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        hint = " (pass an admin token: --token or OLBPROXY_TOKEN)" if exc.code in (401, 403) else ""
        print(f"olbproxy status: {url} answered {exc.code}: {message}{hint}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"olbproxy status: cannot reach {url}: {reason}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``olbproxy status`` to the command line."""
    parser = subparsers.add_parser(
        "status", help="print groups and backends of a running proxy (admin)"
    )
    parser.add_argument("--url", help="the proxy's base URL (default: from the config's listen)")
    parser.add_argument("--config", type=Path, default=None, help="YAML file (as for serve)")
    parser.add_argument("--token", help="an admin token (default: $OLBPROXY_TOKEN)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    parser.set_defaults(func=cmd_status)
