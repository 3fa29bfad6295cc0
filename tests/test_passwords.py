"""Password hashes: any length, the seed's bcryptjs hashes as they are, rehash decisions."""

from __future__ import annotations

import bcrypt

from olbproxy.auth import passwords

KOREAN_100_BYTES = "가나다라마바사아자차카타파하" * 2 + "가나다라마바"  # 34 syllables, 102 bytes


def test_a_korean_password_past_72_bytes_counts_in_full() -> None:
    assert len(KOREAN_100_BYTES.encode()) > 100
    stored = passwords.hash_password(KOREAN_100_BYTES, 4)
    assert stored.startswith("sha256+$2b$04$")
    assert passwords.verify_password(KOREAN_100_BYTES, stored)
    # Same first 72 bytes, different end: bcrypt alone would have accepted this.
    tail_changed = KOREAN_100_BYTES[:-1] + "하"
    assert tail_changed.encode()[:72] == KOREAN_100_BYTES.encode()[:72]
    assert not passwords.verify_password(tail_changed, stored)


def test_seed_bcryptjs_hashes_verify_as_they_are() -> None:
    seed = bcrypt.hashpw(b"hunter22", bcrypt.gensalt(4, prefix=b"2a")).decode()
    assert seed.startswith("$2a$04$")
    assert passwords.verify_password("hunter22", seed)
    assert not passwords.verify_password("hunter23", seed)
    assert passwords.needs_rehash(seed, 4)


def test_seed_hash_of_a_long_password_verifies_like_bcryptjs_truncating_at_72_bytes() -> None:
    long = "비밀번호" * 10  # 120 bytes; bcryptjs hashed the first 72
    seed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4, prefix=b"2b")).decode()
    assert passwords.verify_password(long, seed)


def test_rehash_when_the_cost_changes_not_otherwise() -> None:
    stored = passwords.hash_password("password1", 4)
    assert not passwords.needs_rehash(stored, 4)
    assert passwords.needs_rehash(stored, 5)
    assert passwords.cost_of(stored) == 4


def test_malformed_hashes_and_unknown_users_never_match() -> None:
    assert not passwords.verify_password("x", "")
    assert not passwords.verify_password("x", "$2b$04$broken")
    assert not passwords.verify_password("x", "plaintext")
    assert not passwords.check("no such user", None, 4)
    assert passwords.check("password1", passwords.hash_password("password1", 4), 4)
