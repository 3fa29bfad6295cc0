"""Tokens: pinned algorithm, expiry honoured even from the cache, API key format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace

import jwt
import pytest
from identity import SECRET, auth_settings

from olbproxy.auth.tokens import Claims, Tokens, key_id_of, key_matches, new_api_key
from olbproxy.store import User

USER = User(id="a" * 24, username="kim", username_key="kim", role="user")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, object], payload: dict[str, object], key: bytes | None) -> str:
    """A JWT built by hand, as an attacker would."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(str(header["alg"]))
    signature = b""
    if key is not None and digest is not None:
        signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(clock: Clock, **extra: object) -> dict[str, object]:
    now = int(clock.now)
    return {"sub": USER.id, "role": "admin", "iat": now, "exp": now + 3600, **extra}


def test_issued_token_verifies_and_carries_the_user() -> None:
    clock = Clock()
    tokens = Tokens(auth_settings(), clock=clock)
    token, expires = tokens.issue(USER, ttl=60)
    assert expires.timestamp() == int(clock.now) + 60
    assert tokens.verify(token) == Claims(USER.id, int(clock.now) + 60)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert (payload["name"], payload["role"]) == ("kim", "user")


def test_expiry_is_honoured_for_cached_tokens_too() -> None:
    clock = Clock()
    tokens = Tokens(auth_settings(), clock=clock)
    token, _ = tokens.issue(USER, ttl=60)
    assert isinstance(tokens.verify(token), Claims)  # now cached
    clock.now += 61
    assert tokens.verify(token) == "expired"


def test_tampered_payload_is_invalid() -> None:
    clock = Clock()
    tokens = Tokens(auth_settings(), clock=clock)
    token, _ = tokens.issue(USER)
    header, _, signature = token.split(".")
    forged = b64(json.dumps(claims(clock)).encode())  # role: admin
    assert tokens.verify(f"{header}.{forged}.{signature}") == "invalid"


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("none", None),  # no signature at all
        ("HS512", SECRET.encode()),  # right secret, algorithm not the configured one
        ("RS256", SECRET.encode()),  # algorithm confusion: HMAC bytes under an RSA name
    ],
)
def test_the_algorithm_is_pinned(alg: str, key: bytes | None) -> None:
    clock = Clock()
    tokens = Tokens(auth_settings(), clock=clock)
    token = forge({"alg": alg, "typ": "JWT"}, claims(clock), key)
    assert tokens.verify(token) == "invalid"
    # The same claims signed the configured way do verify: the test forges correctly.
    assert isinstance(
        tokens.verify(forge({"alg": "HS256"}, claims(clock), SECRET.encode())), Claims
    )


def test_other_secret_missing_claims_and_garbage_are_invalid() -> None:
    clock = Clock()
    tokens = Tokens(auth_settings(), clock=clock)
    assert tokens.verify(forge({"alg": "HS256"}, claims(clock), b"y" * 48)) == "invalid"
    no_exp = {k: v for k, v in claims(clock).items() if k != "exp"}
    assert tokens.verify(forge({"alg": "HS256"}, no_exp, SECRET.encode())) == "invalid"
    assert tokens.verify("not.a.token") == "invalid"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    clock = Clock()
    settings = auth_settings(issuer="olbproxy", audience="mac-studio")
    tokens = Tokens(settings, clock=clock)
    token, _ = tokens.issue(USER)
    assert isinstance(tokens.verify(token), Claims)
    stranger = Tokens(replace(settings, audience="elsewhere"), clock=clock)
    assert stranger.verify(token) == "invalid"
    unaudienced = forge({"alg": "HS256"}, claims(clock, iss="olbproxy"), SECRET.encode())
    assert tokens.verify(unaudienced) == "invalid"


def test_the_cache_is_bounded() -> None:
    clock = Clock()
    tokens = Tokens(auth_settings(), clock=clock, cache_size=10)
    for i in range(50):
        user = replace(USER, id=f"{i:024x}")
        assert isinstance(tokens.verify(tokens.issue(user)[0]), Claims)
    assert len(tokens._verified) == 10


def test_api_keys_are_recognised_by_shape_and_matched_by_hash() -> None:
    record, key = new_api_key(USER.id, label="open-webui")
    assert key.startswith("olb_")
    assert key_id_of(key) == record.id
    assert record.secret_hash != key
    assert key not in repr(record)
    assert key_matches(key, record)
    assert not key_matches(key[:-1] + ("A" if key[-1] != "A" else "B"), record)
    assert key_id_of("olb_short") is None
    assert key_id_of(key.replace("_", "-", 2)) is None
