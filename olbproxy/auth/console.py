"""Console: the account pages' HTTP API, what the CLI offers, for the web page (ui/).

    GET    /api/auth/me                       any user: who am I (name, role, groups)
    GET    /api/auth/keys                     any user: my API keys (never the secrets)
    POST   /api/auth/keys  {label, groups?}   any user: a new key, shown in this answer only
    DELETE /api/auth/keys/{id}                any user: revoke one of my keys
    POST   /api/auth/password  {current_password, new_password}
    GET    /api/olbproxy/users                admins: every user
    PATCH  /api/olbproxy/users/{username}  {disabled?, groups?}

Keys belong to accounts: an Open WebUI end user named by a front-end key has none, and a
front-end key itself cannot mint keys (it would pass its right to name end users, which
no key made here carries). A key made by a caller who authenticated with a narrower key
gets at most that key's groups. Another user's key id answers 404 like an unknown one,
so ids cannot be probed. Roles are not changed over HTTP: the first admin and every
other come from ``olbproxy user add --admin`` on the machine itself.

Changes take effect on this proxy at once (the directory is told); other proxies on the
same database see them within ``auth.cache_seconds``, as with the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from aiohttp import web

from olbproxy.auth.accounts import Accounts
from olbproxy.auth.directory import Directory
from olbproxy.auth.principal import Principal, principal_of
from olbproxy.body import read_json
from olbproxy.edge import MATCH, Route, route
from olbproxy.errors import BadRequest, Conflict, Forbidden, NotFound
from olbproxy.store import ApiKey, User, UserChanges

LABEL_MAX = 64
ACTIVE_KEYS_MAX = 100  # per user: enough for every tool, bounded against a runaway script
_BODY_LIMIT = 16 * 1024


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _groups_json(groups: frozenset[str] | None) -> list[str] | None:
    return None if groups is None else sorted(groups)


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "label": key.label,
        "groups": _groups_json(key.groups),  # None: the owner's groups, whatever they become
        "front_end": key.front_end,
        "created_at": _iso(key.created_at),
        "revoked_at": _iso(key.revoked_at),
    }


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "groups": _groups_json(user.groups),  # None: every group
        "disabled": user.disabled,
        "created_at": _iso(user.created_at),
        "last_login_at": _iso(user.last_login_at),
    }


class Console:
    """Handlers of a user's own account and of the admins' user list."""

    def __init__(
        self, accounts: Accounts, directory: Directory, groups: Callable[[], Collection[str]]
    ) -> None:
        self.accounts = accounts
        self.store = accounts.store
        self.directory = directory
        # The configured group names, read per request: SIGHUP may change them.
        self.groups = groups

    def routes(self) -> list[Route]:
        admins = "the user list is for admins"
        return [
            *route("/api/auth/me", "GET", self.me),
            *route("/api/auth/keys", ("GET", "POST"), self.keys),
            *route("/api/auth/keys/{key}", "DELETE", self.revoke),
            *route("/api/auth/password", "POST", self.password),
            *route("/api/olbproxy/users", "GET", self.users, "admin", refusal=admins),
            *route(
                "/api/olbproxy/users/{username}",
                "PATCH",
                self.change_user,
                "admin",
                refusal=admins,
            ),
        ]

    # -- a user's own account ------------------------------------------------------------

    async def me(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        usable = self._usable(principal)
        return web.json_response(
            {
                "id": principal.id,
                "username": principal.name,
                "role": principal.role,
                "groups": sorted(usable),  # what /api/tags lists models of
                "every_group": principal.groups is None,
                "via": principal.via,
            }
        )

    async def keys(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        user = await self._account(principal)
        if request.method == "GET":
            keys = await self.store.keys.list(user.id)
            keys.sort(key=lambda k: (k.created_at is not None, k.created_at), reverse=True)
            return web.json_response({"keys": [key_json(k) for k in keys]})
        _, data = await read_json(request, _BODY_LIMIT)
        label = data.get("label", "")
        if not isinstance(label, str) or len(label.strip()) > LABEL_MAX:
            raise BadRequest(f"label must be a string of at most {LABEL_MAX} characters")
        groups = self._key_groups(principal, data.get("groups"))
        active = [k for k in await self.store.keys.list(user.id) if k.revoked_at is None]
        if len(active) >= ACTIVE_KEYS_MAX:
            raise Conflict(f"you have {len(active)} API keys; revoke some before making more")
        record, secret = await self.accounts.create_key(
            user.username, label=label.strip(), groups=groups
        )
        return web.json_response({**key_json(record), "key": secret}, status=201)

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        user = await self._account(principal_of(request))
        key_id = request[MATCH].params["key"]
        record = await self.store.keys.get(key_id)
        # Someone else's key looks exactly like a key that does not exist.
        if record is None or record.user_id != user.id:
            raise NotFound(f"no API key {key_id}")
        if record.revoked_at is not None:
            raise NotFound(f"API key {key_id} is revoked already")
        await self.accounts.revoke_key(key_id)
        revoked = await self.store.keys.get(key_id)
        self.directory.learn_key(revoked or record)
        return web.Response(status=204)

    async def password(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        user = await self._account(principal)
        _, data = await read_json(request, _BODY_LIMIT)
        current, new = data.get("current_password"), data.get("new_password")
        if not isinstance(current, str) or not current:
            raise BadRequest("current_password is required")
        if not isinstance(new, str):
            raise BadRequest("new_password is required")
        changed = await self.accounts.change_password(
            user, current, new, address=request.remote or "unknown"
        )
        self.directory.learn_user(changed)
        # A fresh token, so the page carries on even where a password change ends the
        # tokens issued before it.
        token, expires = await self.accounts.issue_token(changed.username)
        return web.json_response({"token": token, "expires_at": _iso(expires)})

    # -- admins ----------------------------------------------------------------------------

    async def users(self, request: web.Request) -> web.StreamResponse:
        self._admin(principal_of(request))
        users = sorted(await self.store.users.list(), key=lambda u: u.username_key)
        return web.json_response({"users": [user_json(u) for u in users]})

    async def change_user(self, request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        self._admin(principal)
        user = await self.accounts.user(request[MATCH].params["username"])
        _, data = await read_json(request, _BODY_LIMIT)
        unknown = sorted(set(data) - {"disabled", "groups"})
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(unknown)}: only disabled and groups can be "
                "changed here (roles: olbproxy user add --admin on the server)"
            )
        changes: UserChanges = {}
        if "disabled" in data:
            disabled = data["disabled"]
            if not isinstance(disabled, bool):
                raise BadRequest("disabled must be true or false")
            if disabled and user.id == principal.id:
                raise BadRequest("you cannot disable your own account")
            changes["disabled"] = disabled
        if "groups" in data:
            changes["groups"] = self._group_names(data["groups"], "groups")
        if not changes:
            raise BadRequest("nothing to change: send disabled and/or groups")
        changed = await self.accounts.change_user(user.username, changes)
        self.directory.learn_user(changed)
        return web.json_response(user_json(changed))

    # -- rules -------------------------------------------------------------------------------

    async def _account(self, principal: Principal) -> User:
        """The caller's stored account; refused for callers that have none of their own."""
        if principal.front_end:
            raise Forbidden(
                "a front-end key cannot manage API keys or passwords: log in as the user"
            )
        user = await self.store.users.get(principal.id)
        if user is None:
            raise Forbidden("only olbproxy accounts have API keys and passwords")
        return user

    def _admin(self, principal: Principal) -> None:
        if not principal.is_admin:
            raise Forbidden("the user list is for admins")

    def _usable(self, principal: Principal) -> set[str]:
        configured = set(self.groups())
        return configured if principal.groups is None else configured & principal.groups

    def _group_names(self, raw: object, field: str) -> frozenset[str] | None:
        """``null`` (every group) or a non-empty list of configured group names."""
        if raw is None:
            return None
        if not isinstance(raw, list) or not raw or not all(isinstance(g, str) for g in raw):
            raise BadRequest(f"{field} must be null (every group) or a non-empty list of names")
        unknown = sorted(set(raw) - set(self.groups()))
        if unknown:
            known = ", ".join(sorted(self.groups()))
            raise BadRequest(f"unknown group(s) {', '.join(unknown)} (configured: {known})")
        return frozenset(raw)

    def _key_groups(self, principal: Principal, raw: object) -> frozenset[str] | None:
        """A key never gets more than its maker has right now."""
        wanted = self._group_names(raw, "groups")
        if wanted is None:
            # A token's groups are the user's own: None lets the key follow them. A key's
            # are narrowed to that key's: the new key keeps the narrowing.
            return principal.groups if principal.key_id is not None else None
        if principal.groups is not None:
            beyond = sorted(wanted - principal.groups)
            if beyond:
                raise Forbidden(f"a key cannot have groups you do not have: {', '.join(beyond)}")
        return wanted
