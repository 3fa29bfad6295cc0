"""The audit trail: admin actions, who did what to whom, when and from where.

Recorded: users added, disabled, enabled, their passwords and groups changed, seed
users imported; API keys created and revoked; tokens issued by an admin; models
pulled, pushed, created, copied, deleted and blobs uploaded. Never a password, a key
or a token. Entries go to the store's ``audit`` noun (MongoDB collection ``audit``)
and are read back with ``olbproxy audit``.

Writing never holds a request: ``record`` starts the write as a task of its own and
returns (the request path never awaits MongoDB, as with the recorder). A write that
fails is logged, with the whole entry, and the action stands; each entry is also
logged when it is made, so the log has it even while MongoDB is away.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from olbproxy.auth.accounts import username_key
from olbproxy.auth.principal import OPEN, PRINCIPAL
from olbproxy.store import AuditEntry, Store, new_id, now

log = logging.getLogger("olbproxy.audit")

# Writes in flight at most; beyond, an entry is only logged (MongoDB is far behind).
PENDING_MAX = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an admin over HTTP, or whoever runs the command line on the Mac."""

    name: str
    via: str
    address: str


def cli_actor() -> Actor:
    """The command line acts as the OS user who runs it, on this host."""
    try:
        user = getpass.getuser()
    except OSError:  # no name for this uid (a container)
        user = "unknown"
    return Actor(name=user, via="cli", address=socket.gethostname())


def request_actor(request: web.Request) -> Actor:
    principal = request.get(PRINCIPAL, OPEN)
    return Actor(name=principal.name, via=principal.via, address=request.remote or "unknown")


class AuditTrail:
    """Records admin actions in the store, off the path of whoever acted."""

    def __init__(self, store: Store, *, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._pending: set[asyncio.Task[None]] = set()

    def record(
        self, actor: Actor, action: str, target: str, *, user: str | None = None, **detail: Any
    ) -> AuditEntry:
        """Record ``action`` on ``target`` (``user``: the user it concerns, if any)."""
        users = tuple(dict.fromkeys(username_key(n) for n in (actor.name, user) if n))
        entry = AuditEntry(
            id=new_id(),
            at=now(),
            actor=actor.name,
            via=actor.via,
            address=actor.address,
            action=action,
            target=target,
            users=users,
            detail={k: v for k, v in detail.items() if v is not None},
        )
        log.info("audit: %s", describe(entry))
        if len(self._pending) >= PENDING_MAX:
            pending = len(self._pending)
            log.error("audit: %d writes pending; not stored: %s", pending, describe(entry))
            return entry
        task = asyncio.create_task(self._write(entry), name="olbproxy-audit")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return entry

    def request(self, request: web.Request, action: str, target: str, **detail: Any) -> None:
        """The hook for HTTP handlers: the admin of ``request`` did ``action``."""
        self.record(request_actor(request), action, target, **detail)

    async def _write(self, entry: AuditEntry) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.store.audit.add(entry)
        except Exception as exc:  # the action stands; the log keeps the entry
            log.error("audit: could not store (%s): %s", exc or type(exc).__name__, describe(entry))

    async def close(self) -> None:
        """Wait for the writes in flight (each bounded by the store's timeout)."""
        if self._pending:
            await asyncio.wait(list(self._pending))

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: on shutdown, finish the writes before the store closes."""
        yield
        await self.close()


def describe(entry: AuditEntry) -> str:
    """One line: ``user.add kim by root (cli from mac-studio) role=user groups=20b``."""
    detail = " ".join(f"{k}={v}" for k, v in entry.detail.items())
    line = f"{entry.action} {entry.target} by {entry.actor} ({entry.via} from {entry.address})"
    return f"{line} {detail}" if detail else line
