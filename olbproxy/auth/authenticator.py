"""Authentication: a request's credentials -> a ``Principal`` (``authenticate``).

The edge calls ``authenticate`` for every route that is not public. Accepted:

* ``Authorization: Bearer <JWT>`` from ``POST /api/auth/login`` or ``olbproxy token issue``;
* ``Authorization: Bearer olb_...``, an API key (Open WebUI's connection key,
  ``OLLAMA_API_KEY``, Claude Code's ``ANTHROPIC_AUTH_TOKEN``);
* ``X-Api-Key: <token or key>``, where the Anthropic SDKs send theirs;
* ``Authorization: Basic base64(user:<API key or JWT>)`` for clients that only take a
  URL (LangChain turns ``http://user:key@host`` into this); the user part is ignored.

Without credentials, a peer inside ``auth.trusted_networks`` is served as
``auth.trusted_user`` (the ``ollama`` CLI cannot send a Bearer token), but only when its
``Host`` names this machine (``trusted_host``): a web page that rebinds its own domain
to 127.0.0.1 sends that domain as ``Host`` and must not borrow the network's trust.
An API key marked front-end lets Open WebUI name its end user in ``X-OpenWebUI-User-*``
headers; those headers are ignored for every other key. The room named by
``X-OpenWebUI-Chat-Id`` is put on ``Principal.room_hint``.

A token carries its user's token epoch (``ep``); a password change raises the epoch, so
every token issued before it is refused once the directory has the new user (within
``auth.cache_seconds``), like a disabled account.

A known token or key costs a dict lookup or two: verified tokens are cached by
tokens.py and users and keys by directory.py, never a database round trip or a bcrypt.
Failures are counted by reason in ``failures`` for the metrics.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from urllib.parse import unquote

from aiohttp import web

from olbproxy.auth import passwords
from olbproxy.auth.accounts import Accounts, username_key
from olbproxy.auth.directory import Directory
from olbproxy.auth.principal import Principal
from olbproxy.auth.tokens import Tokens, key_id_of, key_matches
from olbproxy.cache import Bounded
from olbproxy.errors import Forbidden, Unauthorized
from olbproxy.settings import AuthSettings
from olbproxy.store import Store, User
from olbproxy.supervisor import Supervisor

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
        self._hosts = trusted_host_names(settings.trusted_hosts)
        # The principal made for a user record and a way in, while that record is the
        # directory's current one: every request of a user asks for the same, and making
        # a frozen dataclass of eight fields was most of an authentication. A changed
        # user (refresh, password, groups) is a new record, hence a new principal.
        self._principals: Bounded[tuple[int, str], tuple[User, Principal]] = Bounded(4096)

    async def start(self, supervisor: Supervisor) -> None:
        """Keep the directory fresh; prepare the unknown-user dummy hash."""
        await asyncio.to_thread(passwords.dummy_hash, self.settings.bcrypt_cost)
        supervisor.spawn("identities", self.directory.run)

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if not header:
            api_key = request.headers.get("X-Api-Key", "").strip()
            if api_key:
                return await self._credential(request, api_key, "bearer")
            if (
                self._networks
                and self._trusted_peer(request.remote)
                and trusted_host(request.headers.get("Host"), self._hosts)
            ):
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
        if claims.epoch != user.token_epoch:
            raise self._reject("revoked", "token revoked (the password changed): log in again")
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
        chat = clean(headers.get(OWUI_CHAT, "")) or None
        user_id = clean(headers.get(OWUI_ID, ""))
        if not user_id:
            # Open WebUI's own calls (model lists) carry no user: they are the key's.
            return replace(key, room_hint=chat)
        # Open WebUI percent-encodes the name (quote(name, safe=" ")).
        name = clean(unquote(headers.get(OWUI_NAME, ""))) or clean(headers.get(OWUI_EMAIL, ""))
        admin = key.is_admin and headers.get(OWUI_ROLE, "").strip().lower() == "admin"
        return Principal(
            id=f"owui:{user_id}",
            name=name or user_id,
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
        made = self._principals.get((id(user), via))
        if made is not None and made[0] is user:
            return made[1]
        principal = Principal(
            id=user.id, name=user.username, role=user.role, groups=user.groups, via=via
        )
        self._principals.put((id(user), via), (user, principal))
        return principal

    def _reject(self, reason: str, message: str) -> Unauthorized:
        self.failures[reason] += 1
        return Unauthorized(message)


# Line breaks and other controls become spaces; bidirectional formatting goes.
_CONTROL: dict[int, str | None] = {
    **dict.fromkeys([*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029], " "),
    **dict.fromkeys([0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]),
}


def clean(value: str) -> str:
    """A name taken from a header, fit to store and show: control and bidirectional
    formatting characters removed (they forge log lines and reorder what a reader sees),
    whitespace collapsed, at most 256 characters."""
    return " ".join(value.translate(_CONTROL).split())[:_HEADER_VALUE_MAX]


def trusted_host_names(configured: tuple[str, ...]) -> frozenset[str]:
    names = {"localhost", socket.gethostname().lower()}
    names |= {f"{name}.local" for name in tuple(names) if "." not in name}
    return frozenset(names | {h.strip().lower().rstrip(".") for h in configured})


def trusted_host(host: str | None, names: frozenset[str]) -> bool:
    """Whether ``Host`` names this machine: an IP literal (a page served from an address
    is that address's own), ``localhost`` and its subdomains, this machine's name, or
    ``auth.trusted_hosts``. A rebound domain is none of these. Browsers always send a
    Host; a request without one is not a web page's."""
    if host is None:
        return True
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return host in names or host.endswith(".localhost")
