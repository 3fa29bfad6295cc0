"""Authentication: every request's credentials -> a ``Principal`` on ``request[PRINCIPAL]``.

Accepted, in the ``Authorization`` header:

* ``Bearer <JWT>`` from ``POST /api/auth/login`` or ``olbproxy token issue``;
* ``Bearer olb_...``, an API key (Open WebUI's connection key, ``OLLAMA_API_KEY``);
* ``Basic base64(user:<API key or JWT>)`` for clients that only take a URL
  (LangChain turns ``http://user:key@host`` into this); the user part is ignored.

Without a header, a peer inside ``auth.trusted_networks`` is served as
``auth.trusted_user`` (the ``ollama`` CLI cannot send a Bearer token). An API key
marked front-end lets Open WebUI name its end user in ``X-OpenWebUI-User-*`` headers;
those headers are ignored for every other key. The room named by
``X-OpenWebUI-Chat-Id`` is put on ``Principal.room_hint``.

Public, with ``ANONYMOUS`` as principal: GET/HEAD ``/`` (clients probe it), CORS
preflights, ``/api/auth/register`` and ``/api/auth/login``, and the paths other
components register with ``allow_anonymous(path)`` before the app starts.

A known token or key costs a dict lookup or two: verified tokens are cached by
tokens.py and users and keys by directory.py, never a database round trip or a bcrypt.
Failures are counted by reason in ``failures`` for the metrics.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from urllib.parse import unquote

from aiohttp import web

from olbproxy.auth import passwords
from olbproxy.auth.accounts import Accounts, username_key
from olbproxy.auth.directory import Directory
from olbproxy.auth.principal import ANONYMOUS, PRINCIPAL, Principal
from olbproxy.auth.tokens import Tokens, key_id_of, key_matches
from olbproxy.errors import Forbidden, Unauthorized
from olbproxy.settings import AuthSettings
from olbproxy.store import Store, User

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Open WebUI's forwarded user headers (ENABLE_FORWARD_USER_INFO_HEADERS=true).
OWUI_ID = "X-OpenWebUI-User-Id"
OWUI_NAME = "X-OpenWebUI-User-Name"
OWUI_EMAIL = "X-OpenWebUI-User-Email"
OWUI_ROLE = "X-OpenWebUI-User-Role"
OWUI_CHAT = "X-OpenWebUI-Chat-Id"
_HEADER_VALUE_MAX = 256

HOW = "send Authorization: Bearer <token or API key> (a token: POST /api/auth/login)"
# Basic with an account's password is the usual mistake (http://kim:PASSWORD@host).
BASIC_HINT = (
    "HTTP Basic takes an API key (olb_...) as the password, not an account password: "
    "ask an admin for a key (olbproxy key create NAME)"
)


class Authenticator:
    """The authentication middleware and what it needs: tokens, the directory, accounts."""

    def __init__(self, settings: AuthSettings, store: Store) -> None:
        self.settings = settings
        # Failures by reason: missing, invalid, expired, revoked, disabled, forbidden,
        # throttled, login (wrong username or password). Read by metrics at scrape time.
        self.failures: Counter[str] = Counter()
        self.tokens = Tokens(settings)
        trusted = username_key(settings.trusted_user) if settings.trusted_user else None
        self.directory = Directory(
            store, refresh_seconds=settings.cache_seconds, trusted_user=trusted
        )
        self.accounts = Accounts(settings, store, self.tokens, failures=self.failures)
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.trusted_networks
        )
        self._anonymous: set[str] = {"/api/auth/register", "/api/auth/login"}

    def allow_anonymous(self, path: str) -> None:
        """Serve ``path`` (exact, any method) without credentials, e.g. ``/metrics``.

        Call before the app starts. Handlers of such a path see ``ANONYMOUS``.
        """
        self._anonymous.add(path)

    def is_public(self, request: web.Request) -> bool:
        path = request.path
        if path == "/":
            return request.method in ("GET", "HEAD")
        if request.method == "OPTIONS":
            # Only CORS preflights (the cors middleware answers them before this one).
            return "Access-Control-Request-Method" in request.headers
        return path in self._anonymous

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: keep the directory fresh; prepare the unknown-user dummy hash."""
        await asyncio.to_thread(passwords.dummy_hash, self.settings.bcrypt_cost)
        task = asyncio.create_task(self.directory.run(), name="olbproxy-directory")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.is_public(request):
            request[PRINCIPAL] = ANONYMOUS
            return await handler(request)
        request[PRINCIPAL] = await self.authenticate(request)
        try:
            return await handler(request)
        except Forbidden:  # a model outside the user's groups, or an admin-only route
            self.failures["forbidden"] += 1
            raise

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if not header:
            if self._networks and self._trusted_peer(request.remote):
                return await self._trusted()
            raise self._reject("missing", f"authentication required: {HOW}")
        scheme, _, credential = header.partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "bearer" and credential:
            return await self._credential(request, credential, "bearer")
        if scheme == "basic":
            return await self._credential(request, self._basic_password(credential), "basic")
        raise self._reject("invalid", f"unsupported Authorization header: {HOW}")

    def _basic_password(self, encoded: str) -> str:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        password = decoded.partition(":")[2]
        if not password:
            raise self._reject(
                "invalid", "HTTP Basic needs an API key (or a token) as the password"
            )
        return password

    async def _credential(self, request: web.Request, credential: str, scheme: str) -> Principal:
        key_id = key_id_of(credential)
        if key_id is not None:
            return await self._api_key(request, credential, key_id, scheme)
        claims = self.tokens.verify(credential)
        if claims == "expired":
            raise self._reject("expired", "token expired: log in again (POST /api/auth/login)")
        if claims == "invalid":
            raise self._reject(
                "invalid", BASIC_HINT if scheme == "basic" else f"invalid token or API key: {HOW}"
            )
        user = await self.directory.user(claims.subject)
        if user is None:
            raise self._reject("invalid", "the token's user does not exist any more")
        return self._principal(user, via="token" if scheme == "bearer" else "basic")

    async def _api_key(
        self, request: web.Request, credential: str, key_id: str, scheme: str
    ) -> Principal:
        record = await self.directory.key(key_id)
        # The hash is compared before anything about the key is revealed.
        if record is None or not key_matches(credential, record):
            raise self._reject("invalid", f"invalid API key: {HOW}")
        if record.revoked_at is not None:
            raise self._reject("revoked", "API key revoked: ask an admin for a new one")
        owner = await self.directory.user(record.user_id)
        if owner is None:
            raise self._reject("invalid", "the API key's user does not exist any more")
        principal = self._principal(owner, via="key" if scheme == "bearer" else "basic")
        groups = principal.groups
        if record.groups is not None:
            groups = record.groups if groups is None else groups & record.groups
        principal = replace(principal, groups=groups, front_end=record.front_end, key_id=record.id)
        return self._end_user(request, principal) if record.front_end else principal

    def _end_user(self, request: web.Request, key: Principal) -> Principal:
        """Open WebUI's end user, named by its forwarded headers, within the key's rights."""
        headers = request.headers
        chat = headers.get(OWUI_CHAT, "").strip()[:_HEADER_VALUE_MAX] or None
        user_id = headers.get(OWUI_ID, "").strip()[:_HEADER_VALUE_MAX]
        if not user_id:
            # Open WebUI's own calls (model lists) carry no user: they are the key's.
            return replace(key, room_hint=chat)
        # Open WebUI percent-encodes the name (quote(name, safe=" ")).
        name = unquote(headers.get(OWUI_NAME, "")).strip() or headers.get(OWUI_EMAIL, "").strip()
        admin = key.is_admin and headers.get(OWUI_ROLE, "").strip().lower() == "admin"
        return Principal(
            id=f"owui:{user_id}",
            name=(name or user_id)[:_HEADER_VALUE_MAX],
            role="admin" if admin else "user",
            groups=key.groups,
            via=key.via,
            front_end=True,
            key_id=key.key_id,
            room_hint=chat,
        )

    def _trusted_peer(self, remote: str | None) -> bool:
        try:
            address = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
        return any(address in network for network in self._networks)

    async def _trusted(self) -> Principal:
        user = await self.directory.trusted_user()
        if user is None:
            raise self._reject(
                "missing",
                f"auth.trusted_user '{self.settings.trusted_user}' does not exist: "
                f"create it with `olbproxy user add {self.settings.trusted_user}`",
            )
        return self._principal(user, via="trusted")

    def _principal(self, user: User, *, via: str) -> Principal:
        if user.disabled:
            self.failures["disabled"] += 1
            raise Forbidden(f"account '{user.username}' is disabled")
        return Principal(
            id=user.id, name=user.username, role=user.role, groups=user.groups, via=via
        )

    def _reject(self, reason: str, message: str) -> Unauthorized:
        self.failures[reason] += 1
        return Unauthorized(message)
