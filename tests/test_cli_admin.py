"""The admin commands (`olbproxy user|key|token`) against MongoDB, seen through a running proxy."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from conftest import StartProxy, StartSims
from identity import CHAT, SECRET, Site, bearer, database_of, start_site
from pymongo import AsyncMongoClient

from olbproxy.cli import main


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str) -> Path:
    """A config whose store is this test's database (MONGODB_URI, as the seed set it)."""
    path = tmp_path / "olbproxy.yaml"
    path.write_text("auth:\n  bcrypt_cost: 4\n", encoding="utf-8")
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    for name in ("JWT_SECRET_FILE", "OLLAMA_ENDPOINTS", "OLBPROXY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
async def site(start_sims: StartSims, start_proxy: StartProxy, mongo_uri: str) -> Site:
    return await start_site(start_sims, start_proxy, mongo_uri)


class Cli:
    """Runs `olbproxy ...` in a thread (it runs its own event loop), feeding stdin."""

    def __init__(self, cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        self.cfg, self.monkeypatch, self.capsys = cfg, monkeypatch, capsys

    async def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = await asyncio.to_thread(main, [*argv, "--config", str(self.cfg)])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Cli:
    return Cli(cfg, monkeypatch, capsys)


async def status_of(site: Site, credential: str, body: Any = CHAT) -> int:
    async with site.proxy.http.post(
        site.url + "/api/chat", json=body, headers=bearer(credential)
    ) as resp:
        return resp.status


async def login(site: Site, username: str, password: str) -> tuple[int, Any]:
    body = {"username": username, "password": password}
    async with site.proxy.http.post(site.url + "/api/auth/login", json=body) as resp:
        return resp.status, await resp.json()


async def test_first_admin_is_created_with_a_password_from_stdin(cli: Cli, site: Site) -> None:
    code, out, _ = await cli("user", "add", "root", "--admin", stdin="s3cret-admin-pw\n")
    assert (code, out.strip()) == (0, "added admin root (groups (all))")
    status, body = await login(site, "root", "s3cret-admin-pw")
    assert (status, body["role"]) == (200, "admin")
    pull = {"model": "gpt-oss:20b", "stream": False}
    async with site.proxy.http.post(
        site.url + "/api/pull", json=pull, headers=bearer(body["token"])
    ) as resp:
        assert resp.status == 200


async def test_users_are_added_listed_disabled_and_enabled(cli: Cli, site: Site) -> None:
    assert (await cli("user", "add", "kim", "--groups", "20b", stdin="password-kim\n"))[0] == 0
    code, _, err = await cli("user", "add", "KIM", stdin="password-kim\n")
    assert (code, err.strip()) == (1, "olbproxy: username 'KIM' is taken")
    code, out, _ = await cli("user", "list")
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["kim", "user", "20b", "active"]

    token = (await login(site, "kim", "password-kim"))[1]["token"]
    assert await status_of(site, token) == 200
    assert await status_of(site, token, {**CHAT, "model": "gpt-oss:120b"}) == 403
    assert (await cli("user", "disable", "kim"))[0] == 0
    await site.authenticator.directory.refresh()  # what the proxy does every cache_seconds
    assert await status_of(site, token) == 403
    assert (await cli("user", "enable", "kim"))[0] == 0
    await site.authenticator.directory.refresh()
    assert await status_of(site, token) == 200
    code, _, err = await cli("user", "disable", "nobody")
    assert (code, err.strip()) == (1, "olbproxy: no user named 'nobody'")


def test_passwords_are_never_taken_from_argv(cfg: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["user", "add", "kim", "--password", "x", "--config", str(cfg)])
    assert refused.value.code == 2


async def test_short_passwords_are_refused_by_the_cli_too(cli: Cli) -> None:
    code, _, err = await cli("user", "add", "kim", stdin="short\n")
    assert (code, err.strip()) == (1, "olbproxy: password is too short (at least 8 characters)")


async def test_keys_are_created_shown_once_listed_and_revoked(cli: Cli, site: Site) -> None:
    await cli("user", "add", "owui", stdin="password-owui\n")
    code, out, err = await cli("key", "create", "owui", "--label", "open-webui", "--front-end")
    assert code == 0
    key = out.strip()
    assert key.startswith("olb_")
    assert "shown once" in err
    assert await status_of(site, key) == 200

    code, out, _ = await cli("key", "list")
    key_id = key.split("_")[1]
    row = next(line for line in out.splitlines() if line.startswith(key_id))
    assert row.split()[1:4] == ["owui", "open-webui", "yes"]
    assert key not in out  # never shown again

    assert (await cli("key", "revoke", key_id))[0] == 0
    await site.authenticator.directory.refresh()
    assert await status_of(site, key) == 401
    code, _, err = await cli("key", "revoke", key_id)
    assert (code, err.strip()) == (1, f"olbproxy: API key {key_id} is revoked already")


async def test_token_issue_honours_ttl(cli: Cli, site: Site) -> None:
    await cli("user", "add", "kim", stdin="password-kim\n")
    code, out, _ = await cli("token", "issue", "kim", "--ttl", "120")
    assert code == 0
    token = out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120
    assert await status_of(site, token) == 200


async def test_token_issue_needs_a_real_secret(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    await cli("user", "add", "kim", stdin="password-kim\n")
    monkeypatch.setenv("JWT_SECRET", "too-short")
    code, _, err = await cli("token", "issue", "kim")
    assert code == 2
    assert "at least 32 bytes" in err


@pytest.fixture
async def mongo(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    yield client
    await client.close()


def seed_hash(password: str) -> str:
    # What the seed's bcryptjs stored: $2a$, cost 10 there (4 here, to stay fast).
    return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(4, prefix=b"2a")).decode()


async def test_seed_users_are_imported_keeping_their_passwords(
    cli: Cli, site: Site, mongo: AsyncMongoClient[dict[str, Any]], mongo_uri: str
) -> None:
    seed = mongo[database_of(mongo_uri) + "_seed"]["users"]
    await seed.insert_many(
        [
            {"email": "kim", "pw": seed_hash("kim-password")},
            {"email": "KIM", "pw": seed_hash("other")},  # same name to us
            {"email": "lee", "pw": "plaintext!"},
            {"email": "no spaces", "pw": seed_hash("x")},
        ]
    )
    code, out, _ = await cli(
        "user",
        "import",
        "--from-uri",
        mongo_uri,
        "--from-db",
        database_of(mongo_uri) + "_seed",
        "--username-field",
        "email",
        "--password-field",
        "pw",
    )
    assert code == 0
    assert out.splitlines() == [
        "kim: imported",
        "KIM: skipped: username 'KIM' is taken",
        "lee: skipped: the password field is not a bcrypt hash",
        "no spaces: skipped: username may contain only letters (any script), digits and "
        ". _ - @ (no spaces)",
        f"imported 1 of 4 users from {database_of(mongo_uri)}_seed.users",
    ]
    status, _ = await login(site, "kim", "kim-password")
    assert status == 200
    imported = await site.store.users.find("kim")
    assert imported is not None
    assert imported.password_hash.startswith("sha256+")  # upgraded at that login


async def test_seed_users_in_the_stores_own_collection_are_adopted_in_place(
    cli: Cli, site: Site, mongo: AsyncMongoClient[dict[str, Any]], mongo_uri: str
) -> None:
    """The shipped config names the seed's own database (gpt): its users are adopted."""
    users = mongo[database_of(mongo_uri)]["users"]
    result = await users.insert_many(
        [
            {"username": "park", "password": seed_hash("park-password")},
            {"username": "choi", "password": seed_hash("choi-password")},
        ]
    )
    argv = ("user", "import", "--from-db", database_of(mongo_uri))
    code, out, _ = await cli(*argv)
    assert (code, out.splitlines()[-1]) == (0, f"imported 2 of 2 users from {argv[-1]}.users")
    assert await users.count_documents({}) == 2  # completed in place, not copied
    park = await users.find_one({"username": "park"})
    assert park is not None
    assert park["_id"] == result.inserted_ids[0]
    assert park["password"].startswith("$2a$")  # the seed app's own field is left alone
    assert (await login(site, "park", "park-password"))[0] == 200
    code, out, _ = await cli(*argv)  # again: nothing left to import
    assert out.splitlines() == [f"imported 0 of 0 users from {argv[-1]}.users"]


def test_serve_refuses_to_start_without_a_strong_secret(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv("JWT_SECRET")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "JWT_SECRET must be at least 32 bytes long" in capsys.readouterr().err
    # The seed's .env.local line: dotenv files do not run commands.
    (cfg.parent / ".env.local").write_text("JWT_SECRET=$(openssl rand -base64 32)\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert ".env files do not run commands" in err
    assert "openssl rand -base64 48" in err


def test_admin_commands_need_a_database_not_the_memory_store(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    cfg.write_text("store:\n  backend: memory\n", encoding="utf-8")
    assert main(["user", "list", "--config", str(cfg)]) == 2
    assert "admin commands need store.backend: mongodb" in capsys.readouterr().err
