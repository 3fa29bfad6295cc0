"""Bearer credentials: signed login tokens (JWT) and API keys.

Tokens are HS256 JWTs (``auth.jwt_algorithm``) with ``sub`` (user id), ``name``,
``role``, ``iat``, ``exp`` and ``ep`` (the user's token epoch: a password change raises
it and so revokes older tokens), plus ``iss``/``aud`` when configured. The algorithm is
pinned by the configuration, never read from the token, so ``alg: none`` and tokens
signed with another algorithm are refused. A token verified once is remembered (a
bounded dict keyed by the token string) until its ``exp``: PyJWT costs tens of
microseconds, a dict lookup well under one.

API keys look like ``olb_<12 hex id>_<43 characters of secret>``. Only the SHA-256 of
the whole key is stored: the secret has 256 random bits, so a slow hash would add
nothing but cost, and a fast one lets each request check a key in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import jwt

from olbproxy.cache import Bounded
from olbproxy.settings import AuthSettings
from olbproxy.store import ApiKey, User

KEY_PREFIX = "olb_"
_KEY_ID_LEN = 12
_KEY_LEN = len(KEY_PREFIX) + _KEY_ID_LEN + 1 + 43

Rejection = Literal["invalid", "expired"]


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str  # user id
    expires: float  # unix time
    epoch: int = 0  # the user's token epoch when issued (``ep``; absent in older tokens)


class Tokens:
    """Issues and verifies login tokens; remembers verified ones until they expire."""

    def __init__(
        self,
        settings: AuthSettings,
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.cache_size = cache_size
        self.clock = clock
        self._verified: Bounded[str, Claims] = Bounded(cache_size)

    def issue(self, user: User, ttl: float | None = None) -> tuple[str, datetime]:
        s = self.settings
        now = int(self.clock())
        expires = now + int(ttl if ttl is not None else s.token_ttl)
        claims: dict[str, object] = {
            "sub": user.id,
            "name": user.username,
            "role": user.role,
            "iat": now,
            "exp": expires,
            "ep": user.token_epoch,
        }
        if s.issuer:
            claims["iss"] = s.issuer
        if s.audience:
            claims["aud"] = s.audience
        token = jwt.encode(claims, self._secret(), algorithm=s.jwt_algorithm)
        return token, datetime.fromtimestamp(expires, UTC)

    def verify(self, token: str) -> Claims | Rejection:
        now = self.clock()
        claims = self._verified.get(token)
        if claims is None:
            try:
                payload = jwt.decode(
                    token,
                    self._secret(),
                    algorithms=[self.settings.jwt_algorithm],
                    issuer=self.settings.issuer,
                    audience=self.settings.audience,
                    # Expiry is checked below against self.clock, for cached tokens too.
                    options={"require": ["exp", "iat", "sub"], "verify_exp": False},
                )
            except jwt.InvalidTokenError:
                return "invalid"
            subject, expires = payload.get("sub"), payload.get("exp")
            epoch = payload.get("ep", 0)
            if (
                not isinstance(subject, str)
                or not isinstance(expires, int | float)
                or not isinstance(epoch, int)
            ):
                return "invalid"
            claims = Claims(subject, float(expires), epoch)
            self._verified.put(token, claims)
        if claims.expires <= now:
            self._verified.pop(token)
            return "expired"
        return claims

    def _secret(self) -> str:
        if not self.settings.jwt_secret:
            # serve refuses to start without one (readiness.check_secret); tests set one.
            raise RuntimeError("auth.jwt_secret is not set")
        return self.settings.jwt_secret


def new_api_key(
    user_id: str, *, label: str = "", front_end: bool = False, groups: frozenset[str] | None = None
) -> tuple[ApiKey, str]:
    """A new key record and the key itself (shown once, never stored)."""
    key_id = secrets.token_hex(_KEY_ID_LEN // 2)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        id=key_id,
        user_id=user_id,
        secret_hash=key_hash(key),
        label=label,
        front_end=front_end,
        groups=groups,
        created_at=datetime.now(UTC),
    )
    return record, key


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(text: str) -> str | None:
    """The id part of a well-formed API key, else None."""
    if len(text) != _KEY_LEN or not text.startswith(KEY_PREFIX):
        return None
    key_id = text[len(KEY_PREFIX) : len(KEY_PREFIX) + _KEY_ID_LEN]
    if text[len(KEY_PREFIX) + _KEY_ID_LEN] != "_" or not all(
        c in "0123456789abcdef" for c in key_id
    ):
        return None
    return key_id


def key_matches(text: str, record: ApiKey) -> bool:
    return hmac.compare_digest(key_hash(text), record.secret_hash)
