"""Password hashes: bcrypt, with a pre-hash so that any password length works.

bcrypt reads at most 72 bytes (24 Hangul syllables in UTF-8), and the ``bcrypt``
package refuses longer input rather than truncating it. New hashes therefore run
bcrypt over ``base64(HMAC-SHA256(PEPPER, password))``: 44 ASCII bytes whatever the
password's length, with no NUL byte (bcrypt would stop there). They are stored as
``sha256+$2b$<cost>$...`` so verification knows the scheme. The HMAC, rather than a
bare SHA-256, keeps a leaked unsalted SHA-256 list from another site from being
tried directly against these hashes.

The seed app's bcryptjs hashes (``$2a$``/``$2b$``/``$2y$``) verify as they are:
bcryptjs silently used the first 72 bytes, so the same is done here. ``needs_rehash``
tells login to replace them (and hashes of another cost) with the current scheme.

Every function here is CPU-bound for ~0.25 s at cost 12: call them through
``asyncio.to_thread`` (bcrypt releases the GIL), never on the event loop.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

import bcrypt

PREFIX = "sha256+"
LEGACY = ("$2a$", "$2b$", "$2y$")
PEPPER = b"olbproxy password v1"


def _prehash(password: str) -> bytes:
    digest = hmac.new(PEPPER, password.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest)


def hash_password(password: str, cost: int) -> str:
    hashed = bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds=cost))
    return PREFIX + hashed.decode("ascii")


def verify_password(password: str, stored: str) -> bool:
    try:
        if stored.startswith(PREFIX):
            return bcrypt.checkpw(_prehash(password), stored[len(PREFIX) :].encode("ascii"))
        if stored.startswith(LEGACY):
            return bcrypt.checkpw(password.encode("utf-8")[:72], stored.encode("ascii"))
    except ValueError:  # a malformed hash (or a NUL in a legacy password): no match
        return False
    return False


def check(password: str, stored: str | None, cost: int) -> bool:
    """Verify against ``stored``; for an unknown user (None) spend the same time, say no."""
    if stored is None:
        verify_password(password, dummy_hash(cost))
        return False
    return verify_password(password, stored)


def cost_of(stored: str) -> int | None:
    bare = stored.removeprefix(PREFIX)
    parts = bare.split("$")
    return (
        int(parts[2]) if bare.startswith(LEGACY) and len(parts) > 3 and parts[2].isdigit() else None
    )


def needs_rehash(stored: str, cost: int) -> bool:
    return not stored.startswith(PREFIX) or cost_of(stored) != cost


@functools.cache
def dummy_hash(cost: int) -> str:
    """Checked (and the answer ignored) for unknown users, so they take as long as known ones."""
    return hash_password("no such user", cost)


def is_bcrypt(stored: str) -> bool:
    return stored.removeprefix(PREFIX).startswith(LEGACY)
