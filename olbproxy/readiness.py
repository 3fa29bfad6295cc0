"""Readiness: what ``serve`` needs beyond a config that loads.

``config.load()`` accepts a file that is valid as written; serving also needs a strong
JWT secret (when auth is on), a MongoDB URI (for the mongodb store), a certificate and
key that load, and a log file it can write. ``serve`` and ``check-config`` both call
``check_serve()``, so check-config says OK exactly when serve would start.
"""

from __future__ import annotations

import os
from pathlib import Path

from olbproxy.errors import ConfigError
from olbproxy.settings import Settings


def check_serve(settings: Settings) -> None:
    """What serving needs beyond a valid file: ``serve`` and ``check-config`` both call
    this, so check-config says OK exactly when serve would start."""
    if settings.auth.enabled:
        check_secret(settings)
    if settings.store.backend == "mongodb" and not settings.store.mongodb_uri:
        raise ConfigError(
            f"MONGODB_URI is not set: store.backend mongodb needs it; put it in "
            f"{_dotenv_of(settings)} or the environment, e.g. mongodb://127.0.0.1:27017/gpt "
            f"(or store.backend: memory in {settings.source} for a trial without MongoDB)"
        )
    if settings.tls_cert is not None:
        from olbproxy.tls import server_context

        server_context(settings)
    if settings.log_file is not None:
        _check_log_file(settings.source, Path(settings.log_file).expanduser())


def _check_log_file(source: str, path: Path) -> None:
    """Writable, checked without creating it: check-config leaves no file behind."""
    if path.exists():
        problem = None if os.access(path, os.W_OK) else "Permission denied"
    elif not path.parent.is_dir():
        problem = "No such file or directory"
    else:
        problem = None if os.access(path.parent, os.W_OK) else "Permission denied"
    if problem:
        raise ConfigError(f"{source}: log_file: cannot write {path}: {problem}")


def _dotenv_of(settings: Settings) -> str:
    if settings.source.startswith("<"):
        return ".env.local beside the config"
    return str(Path(settings.source).parent / ".env.local")


def check_secret(settings: Settings) -> None:
    """Refuse to serve with a JWT secret an attacker could guess."""
    secret = settings.auth.jwt_secret
    how = "make one with:  openssl rand -base64 48"
    if not secret:
        raise ConfigError(
            f"JWT_SECRET is not set (serve signs login tokens with it): write "
            f"JWT_SECRET=<the output of `openssl rand -base64 48`> into {_dotenv_of(settings)}, "
            "or set it in the environment, or name a file holding it in JWT_SECRET_FILE"
        )
    if secret.startswith(("$(", "`")):
        raise ConfigError(
            f"JWT_SECRET is the literal text {secret!r}: .env files do not run commands, "
            f"so this is not a random secret; run  openssl rand -base64 48  and write "
            f"its output there instead"
        )
    # An HMAC key shorter than its hash's output weakens it (RFC 7518 3.2): 32 bytes for
    # HS256, 48 for HS384, 64 for HS512.
    least = max(32, int(settings.auth.jwt_algorithm[2:]) // 8)
    if len(secret.encode()) < least:
        raise ConfigError(
            f"JWT_SECRET is {len(secret.encode())} bytes long; auth.jwt_algorithm "
            f"{settings.auth.jwt_algorithm} needs at least {least}; {how}"
        )
