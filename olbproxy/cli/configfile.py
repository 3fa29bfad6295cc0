"""Which config file a command reads when it is given no ``--config``.

First match wins:

1. ``--config PATH`` (``check-config PATH``);
2. ``$OLBPROXY_CONFIG``;
3. ``config/olbproxy.yaml`` under the working directory (launchd runs the proxy in
   the checkout);
4. ``config/olbproxy.yaml`` of the checkout olbproxy is installed from
   (``pip install -e .``), so ``.venv/bin/olbproxy user add`` typed in another
   directory still reaches the deployment's database.

Commands that use the store say which config and database they used, on stderr.
"""

from __future__ import annotations

import os
from pathlib import Path

import olbproxy
from olbproxy.errors import ConfigError

CONFIG_NAME = Path("config") / "olbproxy.yaml"


def checkout_config() -> Path | None:
    """The config of the checkout this olbproxy runs from, if it runs from one."""
    root = Path(olbproxy.__file__).resolve().parent.parent
    path = root / CONFIG_NAME
    return path if (root / "pyproject.toml").is_file() and path.is_file() else None


def find_config(explicit: Path | None) -> Path:
    """The config file, by the search order in this module's docstring."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("OLBPROXY_CONFIG"):
        return Path(env)
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local
    if (installed := checkout_config()) is not None:
        return installed
    raise ConfigError(
        f"no config file: pass --config PATH or set OLBPROXY_CONFIG "
        f"(looked for {local}, then the checkout olbproxy is installed from)"
    )
