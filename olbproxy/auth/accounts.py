"""Accounts: sign-up and login (``/api/auth/*``, as in the seed app) and the admin operations.

Usernames are NFC-normalised and trimmed as typed (macOS keyboards often produce NFD),
and unique under ``username_key``: case-folded and NFKC-normalised, so ``Kim``, ``kim``
and a full-width ``Ｋｉｍ`` are one name. Passwords are hashed by passwords.py in a
worker thread. Login answers an unknown user exactly like a wrong password, after a
bcrypt check of the same cost, and is throttled per username and per client address.

The same operations serve the CLI (``olbproxy user|key|token``) and ``olbproxy demo``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from olbproxy import access
from olbproxy.auth import passwords
from olbproxy.auth.principal import Role
from olbproxy.auth.scripts import mixture_allowed
from olbproxy.auth.throttle import Throttle
from olbproxy.auth.tokens import Tokens, new_api_key
from olbproxy.body import read_json
from olbproxy.edge import Route, route
from olbproxy.errors import BadRequest, Conflict, Forbidden, NotFound, ProxyError, Unauthorized
from olbproxy.settings import AuthSettings
from olbproxy.store import ApiKey, SeedUser, Store, User, UserChanges, new_id, now

log = logging.getLogger("olbproxy.auth.accounts")

GENERIC_FAILURE = "invalid username or password"
USERNAME_MAX = 64
PASSWORD_MAX_BYTES = 4096  # the pre-hash takes any length; this only bounds the work
_PUNCTUATION = frozenset("._-@")
_BODY_LIMIT = 64 * 1024


def normalise_username(raw: object) -> str:
    """The username as stored and shown: NFC, trimmed; 400 when it is not acceptable."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("username is required")
    name = unicodedata.normalize("NFC", raw.strip())
    if len(name) > USERNAME_MAX:
        raise BadRequest(f"username is too long (at most {USERNAME_MAX} characters)")
    if not all(c.isalnum() or c in _PUNCTUATION for c in name):
        raise BadRequest(
            "username may contain only letters (any script), digits and . _ - @ (no spaces)"
        )
    return name


def username_key(name: str) -> str:
    """The unique form of a username: case-insensitive, compatibility forms folded."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def check_password(raw: object, minimum: int) -> str:
    if not isinstance(raw, str) or not raw:
        raise BadRequest("password is required")
    if len(raw) < minimum:
        raise BadRequest(f"password is too short (at least {minimum} characters)")
    if len(raw.encode()) > PASSWORD_MAX_BYTES:
        raise BadRequest(f"password is too long (at most {PASSWORD_MAX_BYTES} bytes)")
    return raw


def parse_groups(text: str | None) -> frozenset[str] | None:
    """``"20b,120b"`` -> the set; None or "" -> None (every group)."""
    if not text:
        return None
    return frozenset(g.strip() for g in text.split(",") if g.strip())


@dataclass(frozen=True, slots=True)
class Imported:
    username: str
    outcome: str  # "imported", or why it was skipped


class Accounts:
    """Users, their passwords, API keys and tokens, over one store."""

    def __init__(
        self,
        settings: AuthSettings,
        store: Store,
        tokens: Tokens,
        *,
        failures: Counter[str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tokens = tokens
        self.failures: Counter[str] = Counter() if failures is None else failures
        window = settings.login_window
        self.by_name = Throttle(settings.login_attempts, window, what="failed logins for this user")
        self.by_address = Throttle(
            settings.address_attempts, window, what="login attempts from this address"
        )

    def routes(self) -> list[Route]:
        return [
            *route("/api/auth/register", "POST", self.register, "anonymous"),
            *route("/api/auth/login", "POST", self.login, "anonymous"),
        ]

    # -- HTTP --------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.StreamResponse:
        s = self.settings
        access.attempt(request, "signup", None)  # its refusal is a sign-up's, name or not
        if s.registration == "closed":
            raise Forbidden("registration is closed: ask an admin to add you")
        _, data = await read_json(request, _BODY_LIMIT)
        access.attempt(request, "signup", data.get("username"))
        if s.registration == "invite" and not self._invited(data.get("invite")):
            raise Forbidden("registration needs a valid invite code (field 'invite')")
        name = normalise_username(data.get("username"))
        password = check_password(data.get("password"), s.min_password_length)
        # Each sign-up costs a bcrypt: bound them per address like login attempts.
        address = request.remote or "unknown"
        self._throttled(self.by_address, address)
        self.by_address.record(address)
        groups = frozenset(s.default_groups) or None
        user = await self.add_user(name, password, groups=groups)
        access.signup(request, user.username)
        body = {"id": user.id, "username": user.username, "role": user.role}
        return web.json_response(body, status=201)

    def _invited(self, code: Any) -> bool:
        if not isinstance(code, str) or not code:
            return False
        given = code.encode()
        # Compare with every code in constant time, so timing tells nothing about them.
        return sum(hmac.compare_digest(given, c.encode()) for c in self.settings.invite_codes) > 0

    async def login(self, request: web.Request) -> web.StreamResponse:
        _, data = await read_json(request, _BODY_LIMIT)
        access.attempt(request, "login", data.get("username"))
        password = data.get("password")
        if not isinstance(password, str) or not password:
            raise BadRequest("password is required")
        if len(password.encode()) > PASSWORD_MAX_BYTES:
            raise self._fail(GENERIC_FAILURE)
        try:
            key = username_key(normalise_username(data.get("username")))
        except BadRequest:
            raise self._fail(GENERIC_FAILURE) from None  # such a name cannot exist
        address = request.remote or "unknown"
        self._throttled(self.by_name, key)
        self._throttled(self.by_address, address)
        stamps = self.by_name.record(key), self.by_address.record(address)
        try:
            user = await self.store.users.find(key)
        except ProxyError:  # MongoDB is down: not the client's attempt to spend
            self._release(key, address, stamps)
            raise
        stored = user.password_hash if user else None
        cost = self.settings.bcrypt_cost
        matched = await asyncio.to_thread(passwords.check, password, stored, cost)
        if user is None or not matched:
            raise self._fail(GENERIC_FAILURE)
        self._release(key, address, stamps)
        if user.disabled:
            self.failures["disabled"] += 1
            raise Forbidden(f"account '{user.username}' is disabled")
        token, expires = self.tokens.issue(user)
        await self._logged_in(user, password)
        access.login(request, user.username)
        body = {
            "token": token,
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
            "username": user.username,
            "role": user.role,
        }
        return web.json_response(body)

    def _throttled(self, throttle: Throttle, key: str) -> None:
        try:
            throttle.check(key)
        except ProxyError:
            self.failures["throttled"] += 1
            raise

    def _release(self, key: str, address: str, stamps: tuple[float, float]) -> None:
        self.by_name.release(key, stamps[0])
        self.by_address.release(address, stamps[1])

    def _fail(self, message: str) -> Unauthorized:
        self.failures["login"] += 1
        return Unauthorized(message)

    async def _logged_in(self, user: User, password: str) -> None:
        changes: UserChanges = {"last_login_at": now()}
        cost = self.settings.bcrypt_cost
        if passwords.needs_rehash(user.password_hash, cost):
            # Seed (bcryptjs) hashes and hashes of another cost move to the current scheme
            # now, while the password is at hand.
            changes["password_hash"] = await asyncio.to_thread(
                passwords.hash_password, password, cost
            )
        try:
            await self.store.users.update(user.id, changes)
        except ProxyError as exc:  # the login itself succeeded; this is bookkeeping
            log.warning("could not record the login of %s: %s", user.username, exc)

    # -- operations (HTTP handlers above, CLI, demo) -----------------------------------

    async def add_user(
        self,
        username: str,
        password: str,
        *,
        role: Role = "user",
        groups: frozenset[str] | None = None,
    ) -> User:
        name = normalise_username(username)
        if not mixture_allowed(name):
            raise BadRequest(
                f"username {name!r} mixes scripts that look alike (such as Latin with "
                "Cyrillic or Greek): write it in one script, or Latin with one other"
            )
        check_password(password, self.settings.min_password_length)
        key = username_key(name)
        if await self.store.users.find(key) is not None:  # spare the bcrypt; the index decides
            raise Conflict(f"username '{name}' is taken")
        hashed = await asyncio.to_thread(
            passwords.hash_password, password, self.settings.bcrypt_cost
        )
        user = User(
            id=new_id(),
            username=name,
            username_key=key,
            password_hash=hashed,
            role=role,
            groups=groups,
            created_at=now(),
        )
        await self.store.users.add(user)
        return user

    async def user(self, username: str) -> User:
        user = await self.store.users.find(username_key(normalise_username(username)))
        if user is None:
            raise NotFound(f"no user named '{username}'")
        return user

    async def change_user(self, username: str, changes: UserChanges) -> User:
        user = await self.user(username)
        await self.store.users.update(user.id, changes)
        return await self.user(username)

    async def set_password(self, username: str, password: str) -> User:
        """A new password; every token issued before it stops working (a new epoch)."""
        check_password(password, self.settings.min_password_length)
        user = await self.user(username)
        hashed = await asyncio.to_thread(
            passwords.hash_password, password, self.settings.bcrypt_cost
        )
        changes: UserChanges = {"password_hash": hashed, "token_epoch": user.token_epoch + 1}
        return await self.change_user(username, changes)

    async def change_password(self, user: User, current: str, new: str, *, address: str) -> User:
        """A user changing their own password: the current one is checked like a login.

        The new password is validated first (no bcrypt spent on a request that would fail
        anyway); the check of the current one counts against the same per-username and
        per-address limits as logins, so a stolen token cannot guess the password faster
        than the login page could.
        """
        check_password(new, self.settings.min_password_length)
        key = user.username_key
        self._throttled(self.by_name, key)
        self._throttled(self.by_address, address)
        stamps = self.by_name.record(key), self.by_address.record(address)
        matched = len(current.encode()) <= PASSWORD_MAX_BYTES and await asyncio.to_thread(
            passwords.check, current, user.password_hash, self.settings.bcrypt_cost
        )
        if not matched:
            self.failures["password"] += 1
            raise Forbidden("the current password is wrong")
        self._release(key, address, stamps)
        return await self.set_password(user.username, new)

    async def create_key(
        self,
        username: str,
        *,
        label: str = "",
        front_end: bool = False,
        groups: frozenset[str] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new API key for the user; the key itself is returned once and never stored."""
        user = await self.user(username)
        record, key = new_api_key(user.id, label=label, front_end=front_end, groups=groups)
        await self.store.keys.add(record)
        return record, key

    async def revoke_key(self, key_id: str) -> None:
        if not await self.store.keys.revoke(key_id, now()):
            known = await self.store.keys.get(key_id)
            raise NotFound(
                f"API key {key_id} is revoked already" if known else f"no API key {key_id}"
            )

    async def issue_token(self, username: str, ttl: float | None = None) -> tuple[str, datetime]:
        user = await self.user(username)
        if user.disabled:
            raise Forbidden(f"account '{user.username}' is disabled")
        return self.tokens.issue(user, ttl)

    async def import_seed_users(self, seed: Iterable[SeedUser]) -> list[Imported]:
        """Bring the seed app's users over, keeping their ids and bcryptjs hashes."""
        results = []
        for item in seed:
            try:
                name = normalise_username(item.username)
            except BadRequest as exc:
                results.append(Imported(item.username, f"skipped: {exc.message}"))
                continue
            if not passwords.is_bcrypt(item.password_hash):
                results.append(Imported(name, "skipped: the password field is not a bcrypt hash"))
                continue
            user = User(
                id=item.source_id,
                username=name,
                username_key=username_key(name),
                password_hash=item.password_hash,
                created_at=item.created_at or now(),
            )
            try:
                await self.store.users.add(user)
            except Conflict as exc:
                results.append(Imported(name, f"skipped: {exc.message}"))
                continue
            results.append(Imported(name, "imported"))
        return results
