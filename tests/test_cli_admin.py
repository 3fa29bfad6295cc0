"""The admin commands (`olbproxy user|key|token`) against MongoDB, seen through a running proxy."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import io
import json
import os
import pty
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import jwt
import pytest
from conftest import StartProxy, StartSims
from identity import CHAT, SECRET, Site, bearer, database_of, start_site
from mongo import MongoServer, free_port
from pymongo import AsyncMongoClient

from olbproxy.app import AUDIT
from olbproxy.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_uri: str) -> Path:
    """A config whose store is this test's database (MONGODB_URI, as the seed set it)."""
    path = tmp_path / "olbproxy.yaml"
    path.write_text(
        "auth:\n  bcrypt_cost: 4\ngroups:\n"
        '  - {name: 20b, models: ["gpt-oss:20b"], endpoints: ["http://127.0.0.1:1"]}\n'
        '  - {name: 120b, models: ["gpt-oss:120b"], endpoints: ["http://127.0.0.1:2"]}\n',
        encoding="utf-8",
    )
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

    def __init__(
        self, cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.cfg, self.monkeypatch, self.capsys = cfg, monkeypatch, capsys

    async def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = await asyncio.to_thread(main, [*argv, "--config", str(self.cfg)])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(cfg, monkeypatch, capsys)


def last(err: str) -> str:
    """The failure's line; the first line of stderr says which config and database."""
    return err.strip().splitlines()[-1]


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
    assert (code, last(err)) == (1, "olbproxy: username 'KIM' is taken")
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
    assert (code, last(err)) == (1, "olbproxy: no user named 'nobody'")


def test_passwords_are_never_taken_from_argv(cfg: Path) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["user", "add", "kim", "--password", "x", "--config", str(cfg)])
    assert refused.value.code == 2


async def test_short_passwords_are_refused_by_the_cli_too(cli: Cli) -> None:
    code, _, err = await cli("user", "add", "kim", stdin="short\n")
    assert (code, last(err)) == (1, "olbproxy: password is too short (at least 8 characters)")


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
    assert (code, last(err)) == (1, f"olbproxy: API key {key_id} is revoked already")


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
    assert "HS256 needs at least 32" in err


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
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JWT_SECRET")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "JWT_SECRET is not set" in capsys.readouterr().err
    monkeypatch.setenv("JWT_SECRET", "too-short")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "JWT_SECRET is 9 bytes long; auth.jwt_algorithm HS256 needs at least 32" in (
        capsys.readouterr().err
    )
    monkeypatch.delenv("JWT_SECRET")
    # The seed's .env.local line: dotenv files do not run commands.
    (cfg.parent / ".env.local").write_text("JWT_SECRET=$(openssl rand -base64 32)\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert ".env files do not run commands" in err
    assert "openssl rand -base64 48" in err


def test_admin_commands_need_a_database_not_the_memory_store(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg.write_text("store:\n  backend: memory\n", encoding="utf-8")
    assert main(["user", "list", "--config", str(cfg)]) == 2
    assert "admin commands need store.backend: mongodb" in capsys.readouterr().err


async def test_user_add_refuses_a_group_the_config_does_not_have(cli: Cli, site: Site) -> None:
    code, out, err = await cli("user", "add", "kim", "--groups", "20b,30b", stdin="password-kim\n")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"olbproxy: configuration error: --groups: no group named '30b' in {cli.cfg} "
        "(groups: 20b, 120b)"
    ]
    assert await site.store.users.find("kim") is None


async def test_every_admin_command_says_which_config_and_database_on_stderr(
    cli: Cli, mongo_uri: str
) -> None:
    code, out, err = await cli("user", "list")
    host = mongo_uri.split("//")[1].split("/")[0]
    assert code == 0
    assert out.startswith("USERNAME")  # stdout stays what scripts read
    assert err.splitlines() == [
        f"olbproxy: config {cli.cfg}, MongoDB database '{database_of(mongo_uri)}' on {host}"
    ]


# pymongo leaks the socket of a connect to a dead server that is under way when the
# client closes (see test_store_users): collected here, so no later test inherits it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_user_list_with_mongodb_down_is_one_line_and_no_header(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/gpt?directConnection=true")
    cli.cfg.write_text("store: {timeout: 0.3}\n", encoding="utf-8")
    code, out, err = await cli("user", "list")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"olbproxy: config {cli.cfg}, MongoDB database 'gpt' on 127.0.0.1:1",
        "olbproxy: the database (MongoDB) is unreachable; try again shortly",
    ]
    gc.collect()


def test_ctrl_d_at_the_password_prompt_is_one_line(cfg: Path) -> None:
    """On a real terminal (a pty), Ctrl-D instead of a password: no traceback."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, with the pty as its terminal
        os.execv(
            sys.executable,
            [sys.executable, "-m", "olbproxy", "user", "add", "kim", "--config", str(cfg)],
        )
    output = b""
    try:
        while b"Password for kim:" not in output:
            output += os.read(fd, 1024)
        os.write(fd, b"\x04")  # Ctrl-D
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # the child has gone: the pty is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        _, status = os.waitpid(pid, 0)
    text = output.decode().replace("\r\n", "\n")
    assert os.waitstatus_to_exitcode(status) == 1
    assert text.strip().splitlines()[-1] == "olbproxy: no password given"
    assert "Traceback" not in text


async def test_audit_shows_who_changed_users_and_keys(cli: Cli, site: Site) -> None:
    await cli("user", "add", "kim", "--groups", "20b", stdin="password-kim\n")
    await cli("user", "add", "lee", stdin="password-lee\n")
    _, out, _ = await cli("key", "create", "kim", "--label", "continue")
    key_id = out.strip().split("_")[1]
    await cli("user", "groups", "kim", "20b,120b")
    await cli("key", "revoke", key_id)
    await cli("user", "disable", "lee")

    code, out, _ = await cli("audit", "--json")
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    me = getpass.getuser()
    assert [(e["action"], e["target"], e["actor"], e["via"]) for e in entries] == [
        ("user.add", "kim", me, "cli"),
        ("user.add", "lee", me, "cli"),
        ("key.create", key_id, me, "cli"),
        ("user.groups", "kim", me, "cli"),
        ("key.revoke", key_id, me, "cli"),
        ("user.disable", "lee", me, "cli"),
    ]
    assert entries[0]["detail"] == {"role": "user", "groups": "20b"}
    assert entries[2]["detail"] == {"label": "continue"}
    assert entries[3]["detail"] == {"groups": "120b,20b"}
    assert all(e["address"] == socket.gethostname() for e in entries)
    assert "password-kim" not in out

    code, out, _ = await cli("audit", "--user", "KIM")  # by or on kim, any case
    assert code == 0
    rows = out.splitlines()[1:]
    assert [row.split()[5] for row in rows] == [
        "user.add",
        "key.create",
        "user.groups",
        "key.revoke",
    ]
    code, out, err = await cli("audit", "--since", "2099-01-01")
    assert (code, out.splitlines()[1:]) == (0, [])
    assert "no admin actions recorded" in err
    # The changes themselves took effect: kim may use both groups now.
    user = await site.store.users.find("kim")
    assert user is not None and user.groups == frozenset({"20b", "120b"})


async def test_model_management_is_audited_with_the_admin_and_address(cli: Cli, site: Site) -> None:
    await cli("user", "add", "root", "--admin", stdin="password-root\n")
    token = (await login(site, "root", "password-root"))[1]["token"]
    pull = {"model": "gpt-oss:20b", "stream": False}
    async with site.proxy.http.post(
        site.url + "/api/pull", json=pull, headers=bearer(token)
    ) as resp:
        assert resp.status == 200
    await site.proxy.app[AUDIT].close()  # the write runs off the request path: let it land
    code, out, _ = await cli("audit", "--json", "--user", "root")
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    pulled = entries[-1]
    assert (pulled["action"], pulled["target"], pulled["actor"]) == (
        "model.pull",
        "gpt-oss:20b",
        "root",
    )
    assert (pulled["via"], pulled["address"]) == ("token", "127.0.0.1")


async def test_user_add_and_serve_agree_on_the_database_with_and_without_config(
    own_mongo: MongoServer, start_sims: StartSims, tmp_path: Path
) -> None:
    """The issue's trap: `user add` without --config and `serve --config other.yaml`
    (no store.database, a URI without a database) must reach the same users."""
    (sim,) = await start_sims(1, tokens_per_second=0)
    port = free_port()
    secret = f"JWT_SECRET={SECRET}\nMONGODB_URI={own_mongo.uri}\n"  # no database in the URI
    for directory in ("config", "other"):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / ".env.local").write_text(secret, encoding="utf-8")
    # In the working directory: the shipped config, on a free port, 20b on the simulator.
    shipped = (REPO / "config" / "olbproxy.yaml").read_text(encoding="utf-8")
    shipped = shipped.replace("listen: 0.0.0.0:11434", f"listen: 127.0.0.1:{port}")
    twenty = "http://127.0.0.1:11435, http://127.0.0.1:11436, http://127.0.0.1:11437"
    assert twenty in shipped
    (tmp_path / "config" / "olbproxy.yaml").write_text(shipped.replace(twenty, sim.url))
    # Elsewhere: a config of its own that says nothing about the database.
    other = tmp_path / "other" / "other.yaml"
    other.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'groups: [{{name: 20b, models: ["gpt-oss:20b"], endpoints: ["{sim.url}"]}}]\n',
        encoding="utf-8",
    )

    async def olbproxy(*argv: str, stdin: bytes = b"") -> str:
        env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "olbproxy", *argv, cwd=tmp_path, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(stdin), 60)
        assert process.returncode == 0, err.decode()
        return err.decode()

    err = await olbproxy("user", "add", "kim", stdin=b"password-kim\n")
    said = f"olbproxy: config {tmp_path / 'config' / 'olbproxy.yaml'}, MongoDB database 'gpt'"
    assert err.startswith(said)
    err = await olbproxy("user", "add", "lee", "--config", str(other), stdin=b"password-lee\n")
    assert err.startswith(f"olbproxy: config {other}, MongoDB database 'gpt'")

    for serve_argv in (("serve",), ("serve", "--config", str(other))):
        async with served(serve_argv, cwd=tmp_path) as url, aiohttp.ClientSession() as http:
            for name in ("kim", "lee"):
                body = {"username": name, "password": f"password-{name}"}
                async with http.post(url + "/api/auth/login", json=body) as resp:
                    assert resp.status == 200, (serve_argv, name, await resp.text())
                    token = (await resp.json())["token"]
                async with http.post(url + "/api/chat", json=CHAT, headers=bearer(token)) as r:
                    assert r.status == 200


ENVIRONMENT = (
    "JWT_SECRET",
    "JWT_SECRET_FILE",
    "MONGODB_URI",
    "OLBPROXY_CONFIG",
    "OLLAMA_ENDPOINTS",
)


@contextlib.asynccontextmanager
async def served(argv: tuple[str, ...], *, cwd: Path) -> AsyncIterator[str]:
    """`olbproxy serve ...` as a process, until the block ends; yields its URL."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "olbproxy", *argv, cwd=cwd, env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        while b"olbproxy listening on" not in (
            line := await asyncio.wait_for(process.stderr.readline(), 30)
        ):
            assert line, "olbproxy serve exited before listening"
        url = line.decode().rsplit(" ", 1)[1].strip()
        drain = asyncio.create_task(process.stderr.read())
        yield url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
    await drain
