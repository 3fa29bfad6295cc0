"""TLS: the server's SSL context, from ``tls_cert`` and ``tls_key`` (PEM files).

aiohttp serves HTTPS itself when handed this context, so passwords sent to
``/api/auth/login`` and ``/api/auth/register`` cross the LAN encrypted without a
front-end in the way. ``readiness.check_serve`` builds it once too, so ``check-config``
refuses a certificate that ``serve`` could not load.
"""

from __future__ import annotations

import os
import ssl

from olbproxy.errors import ConfigError
from olbproxy.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for the listener, or None when the config names no certificate."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # Every client the README lists speaks TLS 1.2 or later.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:  # an OSError too: caught before the others
        raise ConfigError(
            f"{settings.source}: tls_cert/tls_key: {settings.tls_cert} and {settings.tls_key} "
            f"are not a PEM certificate chain and its private key ({exc.reason or exc})"
        ) from None
    except FileNotFoundError:
        # ssl does not say which of the two it was.
        missing = [p for p in (settings.tls_cert, settings.tls_key) if not os.path.exists(p)]
        raise ConfigError(
            f"{settings.source}: tls_cert/tls_key: {' and '.join(missing) or settings.tls_cert}: "
            "no such file (relative paths are relative to the working directory)"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{settings.source}: tls_cert/tls_key: cannot read {exc.filename}: {exc.strerror}"
        ) from None
    return context
