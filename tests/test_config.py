"""Configuration: defaults -> YAML -> .env.local -> environment, errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from olbproxy import config
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
        config.check_secret(settings)


def test_short_jwt_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        config.check_secret(config.load(SEED, {"JWT_SECRET": "short"}))


def test_check_config_prints_routing_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert "group 20b: models gpt-oss:20b" in out
    assert "-> http://127.0.0.1:11532" in out


def test_check_config_warns_about_overlaps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
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
