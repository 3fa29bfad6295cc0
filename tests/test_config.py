"""Configuration: defaults -> YAML -> .env.local -> environment, errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from olbproxy import config, readiness
from olbproxy.cli import main
from olbproxy.errors import ConfigError

SEED = Path(__file__).resolve().parent.parent / "config" / "olbproxy.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "olbproxy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_is_the_seed_layout() -> None:
    settings = config.load(SEED, {})
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 11434)
    groups = {g.name: g for g in settings.groups}
    assert groups["20b"].models == ("gpt-oss:20b",)
    assert groups["20b"].endpoints == tuple(f"http://127.0.0.1:{p}" for p in (11435, 11436, 11437))
    assert groups["120b"].endpoints == ("http://127.0.0.1:11531", "http://127.0.0.1:11532")
    assert settings.store.database == "gpt"


def test_group_defaults_apply_and_groups_override(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
group_defaults: {slots: 4, idle_timeout: 30}
groups:
  - {name: a, models: [x], endpoints: ["http://127.0.0.1:1/"], idle_timeout: 5}
""",
    )
    (group,) = config.load(path, {}).groups
    assert (group.slots, group.idle_timeout) == (4, 5.0)
    assert group.endpoints == ("http://127.0.0.1:1",)


def test_ollama_endpoints_replaces_groups_with_one_catch_all(tmp_path: Path) -> None:
    env = {"OLLAMA_ENDPOINTS": "http://localhost:11435, http://localhost:11531"}
    settings = config.load(SEED, env)
    (group,) = settings.groups
    assert group.models == ("*",) and group.catch_all
    assert group.endpoints == ("http://localhost:11435", "http://localhost:11531")
    assert any("OLLAMA_ENDPOINTS" in n for n in settings.notices)


def test_dotenv_beside_the_config_is_read_and_environment_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "groups: []\n")
    (tmp_path / ".env.local").write_text(
        "# seed file\nMONGODB_URI=mongodb://127.0.0.1:27017/gpt\n"
        "JWT_SECRET='from-dotenv-from-dotenv-from-dotenv-1'\n"
        "OLLAMA_ENDPOINTS=http://localhost:11435\n",
        encoding="utf-8",
    )
    settings = config.load(path, {"JWT_SECRET": "from-environment-from-environment-2"})
    assert settings.store.mongodb_uri == "mongodb://127.0.0.1:27017/gpt"
    assert settings.store.database == "gpt"
    assert settings.auth.jwt_secret == "from-environment-from-environment-2"
    assert settings.groups[0].endpoints == ("http://localhost:11435",)


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "grops: []\n")
    with pytest.raises(
        ConfigError, match=r"olbproxy.yaml: grops: unknown key \(did you mean 'groups'\?\)"
    ):
        config.load(path, {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("groups: [{name: a, models: [x], endpoints: [ftp://x]}]", r"groups\[0\]\.endpoints\[0\]"),
        (
            "groups: [{name: a, models: [x], endpoints: [http://x], slots: many}]",
            r"groups\[0\]\.slots",
        ),
        ("groups: [{name: a, endpoints: [http://x]}]", r"groups\[0\]\.models: is required"),
        ("listen: nowhere", r"listen: expected host:port"),
        ("auth: {registration: maybe}", r"auth\.registration: must be one of open, invite, closed"),
        (
            "groups: [{name: a, models: [x], endpoints: [http://x]},"
            " {name: a, models: [y], endpoints: [http://y]}]",
            "used twice",
        ),
        ("health: {interval: fast}", r"health\.interval"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        config.load(write(tmp_path, text), {})
    assert str(tmp_path / "olbproxy.yaml") in str(info.value)


def test_literal_command_in_jwt_secret_is_refused_with_a_recipe() -> None:
    settings = config.load(SEED, {"JWT_SECRET": "$(openssl rand -base64 32)"})
    with pytest.raises(ConfigError, match="openssl rand"):
        readiness.check_secret(settings)


def test_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="HS256 needs at least 32"):
        readiness.check_secret(config.load(SEED, {"JWT_SECRET": "short"}))


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """What serve needs from the environment, and nothing else that config reads."""
    for name in ("JWT_SECRET_FILE", "OLLAMA_ENDPOINTS", "OLBPROXY_LISTEN", "OLBPROXY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JWT_SECRET", "a-secret-of-forty-eight-characters-for-the-test")
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:27017/gpt")
    return monkeypatch


def test_check_config_prints_routing_table(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert "group 20b: models gpt-oss:20b" in out
    assert "-> http://127.0.0.1:11532" in out
    assert "registration closed (self-registered users get: 20b)" in out
    assert "store MongoDB database 'gpt'" in out


def test_check_config_warns_about_overlaps(
    environment: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """
groups:
  - {name: all20, models: ["*:20b"], endpoints: ["http://127.0.0.1:1"]}
  - {name: oss, models: ["gpt-oss:20b"], endpoints: ["http://127.0.0.1:2"]}
""",
    )
    assert main(["check-config", str(path)]) == 0
    assert "warning: group 'oss': 'gpt-oss:20b' is never routed there" in capsys.readouterr().out


def test_check_config_exits_non_zero_on_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(write(tmp_path, "listen: [1, 2]"))]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_shipped_config_is_closed_to_sign_ups_and_gives_them_the_small_group() -> None:
    auth = config.load(SEED, {}).auth
    assert (auth.registration, auth.default_groups) == ("closed", ("20b",))
    # A config that says nothing is closed too.
    assert config.load(None, {}).auth.registration == "closed"


GROUP = '  - {name: a, models: ["*"], endpoints: ["http://127.0.0.1:1"]}\n'


# The examples of issue 15: each one is refused by check-config with this message, and
# by serve with the same one (before it opens anything).
@pytest.mark.parametrize(
    ("text", "dotenv", "unset", "message"),
    [
        pytest.param(
            "groups:\n" + GROUP,
            "JWT_SECRET=$(openssl rand -base64 32)\n",
            ("JWT_SECRET",),
            "JWT_SECRET is the literal text '$(openssl rand -base64 32)': .env files do not "
            "run commands, so this is not a random secret; run  openssl rand -base64 48  and "
            "write its output there instead",
            id="literal-command-in-dotenv",
        ),
        pytest.param(
            "groups:\n" + GROUP,
            None,
            ("JWT_SECRET",),
            "JWT_SECRET is not set (serve signs login tokens with it): write "
            "JWT_SECRET=<the output of `openssl rand -base64 48`> into {dir}/.env.local, or "
            "set it in the environment, or name a file holding it in JWT_SECRET_FILE",
            id="missing-secret",
        ),
        pytest.param(
            "listen: 0.0.0.0:70000\n",
            None,
            (),
            "{path}: listen: port 70000 is out of range (1-65535)",
            id="port-out-of-range",
        ),
        pytest.param(
            "group_defaults: {slots: 0}\ngroups:\n" + GROUP,
            None,
            (),
            "{path}: group_defaults.slots: must be at least 1",
            id="error-in-group-defaults",
        ),
        pytest.param(
            "group_defaults: {idle_timeout: -5}\ngroups:\n" + GROUP,
            None,
            (),
            "{path}: group_defaults.idle_timeout: must be a positive number of seconds",
            id="timeout-in-group-defaults",
        ),
        pytest.param(
            "groups:\n" + GROUP,
            None,
            ("MONGODB_URI",),
            "MONGODB_URI is not set: store.backend mongodb needs it; put it in "
            "{dir}/.env.local or the environment, e.g. mongodb://127.0.0.1:27017/gpt (or "
            "store.backend: memory in {path} for a trial without MongoDB)",
            id="missing-mongodb-uri",
        ),
        pytest.param(
            "auth: {default_groups: [30b]}\ngroups:\n" + GROUP,
            None,
            (),
            "{path}: auth.default_groups[0]: no group is named '30b' (groups: a)",
            id="unknown-default-group",
        ),
        pytest.param(
            "tls_cert: cert.pem\ngroups:\n" + GROUP,
            None,
            (),
            "{path}: tls_key: is required with tls_cert (a PEM file)",
            id="certificate-without-key",
        ),
        pytest.param(
            "log_file: /nonexistent/olbproxy/proxy.log\ngroups:\n" + GROUP,
            None,
            (),
            "{path}: log_file: cannot write /nonexistent/olbproxy/proxy.log: "
            "No such file or directory",
            id="log-file",
        ),
        pytest.param(
            "log_level: chatty\n",
            None,
            (),
            "{path}: log_level: must be one of DEBUG, INFO, WARNING, ERROR, got 'CHATTY'",
            id="log-level",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_check_config_fails_exactly_as_serve_does(
    environment: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    dotenv: str | None,
    unset: tuple[str, ...],
    message: str,
) -> None:
    path = write(tmp_path, text)
    if dotenv is not None:
        (tmp_path / ".env.local").write_text(dotenv, encoding="utf-8")
    for name in unset:
        environment.delenv(name)
    argv = (
        ["check-config", str(path)]
        if command == "check-config"
        else ["serve", "--config", str(path)]
    )
    assert main(argv) == 2
    expected = message.format(path=path, dir=tmp_path)
    assert capsys.readouterr().err == f"olbproxy: configuration error: {expected}\n"


def test_check_config_says_ok_when_serve_would_start(
    environment: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:11434\ngroups:\n" + GROUP)
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK\n")


@pytest.mark.parametrize(
    ("yaml_database", "uri", "expected"),
    [
        (None, "mongodb://127.0.0.1:27017", "gpt"),  # the one default everywhere
        (None, "mongodb://127.0.0.1:27017/seed", "seed"),  # the seed's URI names it
        ("olb", "mongodb://127.0.0.1:27017/seed", "olb"),  # the file says so: it wins
        ("gpt", "mongodb://127.0.0.1:27017/seed", "gpt"),  # even when it is the default
    ],
)
def test_the_database_is_the_files_then_the_uris_then_gpt(
    tmp_path: Path, yaml_database: str | None, uri: str, expected: str
) -> None:
    text = f"store: {{database: {yaml_database}}}\n" if yaml_database else ""
    settings = config.load(write(tmp_path, text), {"MONGODB_URI": uri})
    assert settings.store.database == expected
    assert config.load(None, {"MONGODB_URI": uri}).store.database == (
        expected if yaml_database is None else uri.rsplit("/", 1)[-1]
    )


def test_ollama_endpoints_with_default_groups_is_a_notice_not_a_refusal() -> None:
    settings = config.load(SEED, {"OLLAMA_ENDPOINTS": "http://127.0.0.1:11435"})
    assert any("self-registered users can use no model" in n for n in settings.notices)
