"""Which store a proxy uses: ``open_store`` picks the backend ``store.backend`` names.

Apart from the package's nouns (``store/__init__.py``) so that neither backend imports a
module that imports it back.
"""

from __future__ import annotations

from olbproxy.errors import ConfigError
from olbproxy.settings import Settings
from olbproxy.store import Store


def open_store(settings: Settings) -> Store:
    """The store named by ``store.backend``; nothing is connected until ``start()``."""
    if settings.store.backend == "memory":
        from olbproxy.store.memory import MemoryStore

        return MemoryStore()
    if not settings.store.mongodb_uri:
        raise ConfigError(
            f"{settings.source}: store.mongodb_uri: store.backend mongodb needs a MongoDB URI; "
            "set MONGODB_URI (environment or .env.local), e.g. mongodb://127.0.0.1:27017/gpt"
        )
    from olbproxy.store.mongo import MongoStore

    return MongoStore(settings.store)
