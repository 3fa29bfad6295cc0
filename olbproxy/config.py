"""Configuration: builds the one frozen Settings object (settings.py) with ``load()``.

Order of precedence: built-in defaults, then the YAML file, then the environment (a
``.env.local`` file beside the config, as the seed app used, then the real process
environment, which wins). Every validation message names the file and the key.

Two steps, so that ``check-config`` fails exactly when ``serve`` would:

* ``load()`` reads and validates what the file and the environment say (yamlreader.py
  turns each YAML mapping into typed dataclass fields);
* ``readiness.check_serve()`` adds what serving needs on top: a strong JWT secret, a
  MongoDB URI, a certificate and key that load. ``serve`` and ``check-config`` both call it.

Where the file is looked for when no path is given is the command line's business
(``cli/main.py``); this module only reads the path it is handed.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from olbproxy.errors import ConfigError
from olbproxy.settings import (
    DEFAULT_DATABASE,
    AuthSettings,
    GroupSettings,
    HealthSettings,
    MetricsSettings,
    PlacementSettings,
    RelaySettings,
    RoutesSettings,
    Settings,
    StoreSettings,
)
from olbproxy.yamlreader import Reader

_GROUP_KEYS = {f.name for f in fields(GroupSettings)}
_SECTIONS: dict[str, type] = {
    "health": HealthSettings,
    "auth": AuthSettings,
    "store": StoreSettings,
    "metrics": MetricsSettings,
    "routes": RoutesSettings,
    "relay": RelaySettings,
    "placement": PlacementSettings,
}
_TOP_KEYS = {
    "listen",
    "groups",
    "group_defaults",
    "origins",
    "max_body_bytes",
    "body_timeout",
    "connect_timeout",
    "shutdown_deadline",
    "log_level",
    "aliases",
    "show_cache_seconds",
    "log_format",
    "log_file",
    "access_log",
    "tls_cert",
    "tls_key",
    *_SECTIONS,
}


def parse_listen(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{where}: expected host:port like 0.0.0.0:11434, got {text!r}")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: port {int(port)} is out of range (1-65535)")
    return host.strip("[]") or "0.0.0.0", int(port)


def normalise_endpoint(url: str, where: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL like http://127.0.0.1:11435")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ConfigError(f"{where}: {url!r}: {exc}") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a dotenv file the way Next.js does for the keys we read (no command expansion)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"') and value.endswith(value[0]) and len(value) > 1:
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def _groups(reader: Reader, raw: Any, defaults: dict[str, Any]) -> tuple[GroupSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise reader.fail("groups", "expected a list of groups")
    groups: list[GroupSettings] = []
    for i, item in enumerate(raw):
        key = f"groups[{i}]"
        data = reader.mapping(key, item, _GROUP_KEYS)
        for required in ("name", "models", "endpoints"):
            if not data.get(required):
                raise reader.fail(f"{key}.{required}", "is required")
        values = {**defaults, **reader.dataclass_fields(key, data, GroupSettings)}
        values["endpoints"] = tuple(
            normalise_endpoint(url, f"{reader.source}: {key}.endpoints[{j}]")
            for j, url in enumerate(values["endpoints"])
        )
        groups.append(GroupSettings(**values))
    names = [g.name for g in groups]
    for name in names:
        if names.count(name) > 1:
            raise reader.fail("groups", f"group name {name!r} is used twice")
    return tuple(groups)


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, the YAML file at ``path`` and the environment."""
    environ = dict(os.environ if environ is None else environ)
    source = str(path) if path is not None else "<defaults>"
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        dotenv = Path(path).resolve().parent / ".env.local"
        if dotenv.is_file():
            environ = {**read_dotenv(dotenv), **environ}
    reader = Reader(source)
    top = reader.mapping("", raw, _TOP_KEYS)

    if isinstance(top.get("log_level"), str):
        top["log_level"] = top["log_level"].upper()  # "info" means INFO, as in logging
    values: dict[str, Any] = reader.dataclass_fields(
        "", top, Settings, skip=frozenset({"groups", "source", "notices", *_SECTIONS})
    )
    if "listen" in top:
        values["listen_host"], values["listen_port"] = parse_listen(
            str(top["listen"]), f"{source}: listen"
        )
    group_keys = _GROUP_KEYS - {"name", "models", "endpoints"}
    defaults = reader.dataclass_fields(
        "group_defaults",
        reader.mapping("group_defaults", top.get("group_defaults"), group_keys),
        GroupSettings,
    )
    # Checked on their own first, so a bad default is reported where it is written
    # (group_defaults.slots), not in the first group that inherits it.
    _check_group(f"{source}: group_defaults", defaults)
    values["groups"] = _groups(reader, top.get("groups"), defaults)
    for section, cls in _SECTIONS.items():
        data = reader.mapping(section, top.get(section), {f.name for f in fields(cls)})
        values[section] = cls(**reader.dataclass_fields(section, data, cls))
    database_set = isinstance(top.get("store"), Mapping) and "database" in top["store"]
    settings = Settings(source=source, **values)
    _check_group_names(settings)
    settings = _apply_environment(settings, environ, defaults, database_set=database_set)
    return validate(settings)


def _check_group_names(settings: Settings) -> None:
    """Group names the file refers to must be groups the file defines (before the
    environment: OLLAMA_ENDPOINTS may replace the groups, with a notice)."""
    names = [g.name for g in settings.groups]
    for j, name in enumerate(settings.auth.default_groups):
        if name not in names:
            known = ", ".join(names) or "none"
            raise ConfigError(
                f"{settings.source}: auth.default_groups[{j}]: no group is named {name!r} "
                f"(groups: {known})"
            )


def _apply_environment(
    settings: Settings,
    environ: Mapping[str, str],
    group_defaults: dict[str, Any],
    *,
    database_set: bool = False,
) -> Settings:
    notices = list(settings.notices)
    if endpoints := environ.get("OLLAMA_ENDPOINTS", "").strip():
        urls = tuple(
            normalise_endpoint(u, "environment: OLLAMA_ENDPOINTS")
            for u in endpoints.split(",")
            if u.strip()
        )
        # The seed app's behaviour: one round-robin over every endpoint, any model.
        group = GroupSettings(name="default", models=("*",), endpoints=urls, **group_defaults)
        settings = replace(settings, groups=(group,))
        notices.append(
            f"OLLAMA_ENDPOINTS is set: the groups of {settings.source} are replaced by one "
            f"catch-all group 'default' over {len(urls)} endpoints (the seed app's round-robin)"
        )
        if settings.auth.default_groups:
            notices.append(
                "auth.default_groups names groups OLLAMA_ENDPOINTS replaced: self-registered "
                "users can use no model until an admin gives them the group 'default'"
            )
    if listen := environ.get("OLBPROXY_LISTEN"):
        host, port = parse_listen(listen, "environment: OLBPROXY_LISTEN")
        settings = replace(settings, listen_host=host, listen_port=port)
    if origins := environ.get("OLLAMA_ORIGINS"):
        extra = tuple(o.strip() for o in origins.split(",") if o.strip())
        settings = replace(settings, origins=settings.origins + extra)
    store = settings.store
    if uri := environ.get("MONGODB_URI"):
        store = replace(store, mongodb_uri=uri)
    if store.mongodb_uri and not database_set:
        # The seed's URI names its database (mongodb://127.0.0.1:27017/gpt): honour it.
        name = urlsplit(store.mongodb_uri).path.strip("/")
        store = replace(store, database=name or DEFAULT_DATABASE)
    auth = settings.auth
    secret = environ.get("JWT_SECRET")
    if secret_file := environ.get("JWT_SECRET_FILE"):
        try:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"environment: JWT_SECRET_FILE: cannot read: {exc}") from None
    if secret:
        auth = replace(auth, jwt_secret=secret)
    return replace(settings, store=store, auth=auth, notices=tuple(notices))


def _check_group(key: str, values: Mapping[str, Any]) -> None:
    """Ranges of a group's values (or of group_defaults: only the keys it sets)."""
    for name in ("slots", "max_attempts", "max_num_ctx", "max_num_predict"):
        if values.get(name) is not None and values[name] < 1:
            raise ConfigError(f"{key}.{name}: must be at least 1")
    if values.get("queue_size", 0) < 0:
        raise ConfigError(f"{key}.queue_size: must not be negative")
    for name in ("queue_timeout", "first_byte_timeout", "idle_timeout", "total_timeout"):
        if name in values and values[name] <= 0:
            raise ConfigError(f"{key}.{name}: must be a positive number of seconds")


def validate(settings: Settings) -> Settings:
    src = settings.source
    for i, group in enumerate(settings.groups):
        _check_group(f"{src}: groups[{i}]", {f.name: getattr(group, f.name) for f in fields(group)})
    if (settings.tls_cert is None) != (settings.tls_key is None):
        given, missing = ("tls_cert", "tls_key") if settings.tls_cert else ("tls_key", "tls_cert")
        raise ConfigError(f"{src}: {missing}: is required with {given} (a PEM file)")
    for j, net in enumerate(settings.auth.trusted_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(
                f"{src}: auth.trusted_networks[{j}]: {net!r} is not a network like 127.0.0.1/32"
            ) from None
    if settings.auth.trusted_networks and not settings.auth.trusted_user:
        raise ConfigError(
            f"{src}: auth.trusted_user: is required when auth.trusted_networks is set"
        )
    auth = settings.auth
    if auth.bcrypt_cost not in range(4, 32):
        raise ConfigError(f"{src}: auth.bcrypt_cost: must be between 4 and 31")
    if auth.registration == "invite" and not auth.invite_codes:
        raise ConfigError(f"{src}: auth.invite_codes: registration: invite needs at least one code")
    for name in ("login_attempts", "address_attempts", "min_password_length"):
        if getattr(auth, name) < 1:
            raise ConfigError(f"{src}: auth.{name}: must be at least 1")
    for name in ("token_ttl", "login_window", "cache_seconds"):
        if getattr(auth, name) <= 0:
            raise ConfigError(f"{src}: auth.{name}: must be a positive number of seconds")
    if settings.store.timeout <= 0:
        raise ConfigError(f"{src}: store.timeout: must be a positive number of seconds")
    if settings.store.batch_size < 1:
        raise ConfigError(f"{src}: store.batch_size: must be at least 1")
    if settings.store.queue_size < 0:
        raise ConfigError(f"{src}: store.queue_size: must not be negative")
    if settings.store.queue_bytes < 1:
        raise ConfigError(f"{src}: store.queue_bytes: must be at least 1")
    if settings.store.defer < 0:
        raise ConfigError(f"{src}: store.defer: must not be negative")
    if settings.store.nice not in range(20):
        raise ConfigError(f"{src}: store.nice: must be between 0 and 19")
    if not settings.store.spool_dir.strip():
        raise ConfigError(f"{src}: store.spool_dir: must name a directory")
    if settings.max_body_bytes < 1024:
        raise ConfigError(f"{src}: max_body_bytes: must be at least 1024")
    if settings.metrics.listen:
        parse_listen(settings.metrics.listen, f"{src}: metrics.listen")
    placement = settings.placement
    for name in ("refresh", "cold_load_seconds"):
        if getattr(placement, name) <= 0:
            raise ConfigError(f"{src}: placement.{name}: must be a positive number of seconds")
    if placement.horizon < 0:
        raise ConfigError(f"{src}: placement.horizon: must not be negative")
    if placement.cache_tokens < 0:
        raise ConfigError(f"{src}: placement.cache_tokens: must not be negative")
    _validate_aliases(settings)
    return _validate_routes(settings)


def _validate_aliases(settings: Settings) -> None:
    from olbproxy.routing import Router, normalise_model

    router = Router(settings.groups)
    seen: set[str] = set()
    for i, alias in enumerate(settings.aliases):
        key = f"{settings.source}: aliases[{i}]"
        name = normalise_model(alias.name)
        if name in seen:
            raise ConfigError(f"{key}.name: {alias.name!r} is used twice")
        seen.add(name)
        if router.group_for(alias.model) is None:
            raise ConfigError(f"{key}.model: no group serves {alias.model!r}")
        if "model" in alias.defaults or "name" in alias.defaults:
            raise ConfigError(f"{key}.defaults: the model is the alias's own 'model'")
        options = alias.defaults.get("options")
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"{key}.defaults.options: expected a mapping")


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"})


def _validate_routes(settings: Settings) -> Settings:
    src, routes = settings.source, settings.routes
    endpoints = {url for group in settings.groups for url in group.endpoints}
    if routes.instance is not None:
        instance = normalise_endpoint(routes.instance, f"{src}: routes.instance")
        if instance not in endpoints:
            raise ConfigError(
                f"{src}: routes.instance: {routes.instance!r} is not an endpoint of any group"
            )
        routes = replace(routes, instance=instance)
    for i, extra in enumerate(routes.extra):
        key = f"{src}: routes.extra[{i}]"
        if not extra.path.startswith("/") or "//" in extra.path or "/." in extra.path:
            raise ConfigError(f"{key}.path: must be an absolute path like /api/newthing")
        if not extra.methods or not set(extra.methods) <= _METHODS:
            raise ConfigError(f"{key}.methods: must be some of {', '.join(sorted(_METHODS))}")
    return replace(settings, routes=routes)
