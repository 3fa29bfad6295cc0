"""launchd jobs generated from the config: valid plists, the config's ports, no secrets,
the committed files up to date, and an install script that does what it says."""

from __future__ import annotations

import argparse
import os
import plistlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from olbproxy import config
from olbproxy.cli import launchd
from olbproxy.cli.launchd import Generator, LaunchdOptions
from olbproxy.settings import GroupSettings, Settings

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "olbproxy.yaml"
SECRET = "s3cr3t-jwt-value-that-must-never-leave-the-env-file-0123456789"
MONGO = "mongodb://gpt:hunter2@127.0.0.1:27017/gpt"


def shipped_generator(**options: Any) -> Generator:
    settings = config.load(SHIPPED, environ={})
    opts = LaunchdOptions(config=SHIPPED, workdir=REPO, **options)
    return Generator(settings, opts, REPO / "launchd")


def plists(files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {
        name.removesuffix(".plist"): plistlib.loads(content)
        for name, content in files.items()
        if name.endswith(".plist")
    }


def config_ports(settings: Settings) -> list[int]:
    return sorted(int(url.rsplit(":", 1)[1]) for g in settings.groups for url in g.endpoints)


def test_one_instance_job_per_configured_port_and_one_for_the_proxy() -> None:
    generator = shipped_generator()
    jobs = plists(generator.files())
    settings = generator.settings
    ports = config_ports(settings)
    assert ports == [11435, 11436, 11437, 11531, 11532]  # the seed's Mac Studio layout
    assert sorted(jobs) == sorted(
        [f"com.olbproxy.ollama.{p}" for p in ports] + ["com.olbproxy.proxy"]
    )
    for label, job in jobs.items():
        assert job["Label"] == label
        assert job["RunAtLoad"] is True
        assert job["KeepAlive"] is True
        assert job["StandardOutPath"].startswith("@HOME@/Library/Logs/olbproxy/")
        assert job["StandardErrorPath"] == job["StandardOutPath"]
        assert "UserName" not in job  # agents run as the logged-in user
    for group in settings.groups:
        for url in group.endpoints:
            port = int(url.rsplit(":", 1)[1])
            job = jobs[f"com.olbproxy.ollama.{port}"]
            assert job["ProgramArguments"] == ["/opt/homebrew/bin/ollama", "serve"]
            env = job["EnvironmentVariables"]
            assert env["OLLAMA_HOST"] == f"127.0.0.1:{port}"
            assert env["OLLAMA_NUM_PARALLEL"] == str(group.slots)
            assert env["OLLAMA_KEEP_ALIVE"] == (group.keep_alive or "30m")


def test_proxy_job_runs_serve_with_the_config_in_the_checkout() -> None:
    job = plists(shipped_generator().files())["com.olbproxy.proxy"]
    assert job["ProgramArguments"] == [
        "@WORKDIR@/.venv/bin/olbproxy",
        "serve",
        "--config",
        "@WORKDIR@/config/olbproxy.yaml",
    ]
    assert job["WorkingDirectory"] == "@WORKDIR@"
    assert job["SoftResourceLimits"]["NumberOfFiles"] >= 4096
    assert job["ExitTimeOut"] > config.load(SHIPPED, environ={}).shutdown_deadline
    assert "EnvironmentVariables" not in job


def test_committed_launchd_files_are_up_to_date_with_the_shipped_config() -> None:
    files = shipped_generator().files()
    out = REPO / "launchd"
    committed = {p.name for p in out.iterdir() if p.name.startswith("com.") or p.suffix == ".sh"}
    hint = "run: olbproxy launchd generate --config config/olbproxy.yaml --out launchd"
    assert committed == set(files), hint
    for name, content in files.items():
        assert (out / name).read_bytes() == content, f"launchd/{name} is stale; {hint}"
    assert os.access(out / "install.sh", os.X_OK)


def test_no_secret_reaches_a_plist(tmp_path: Path) -> None:
    conf = tmp_path / "olbproxy.yaml"
    shutil.copy(SHIPPED, conf)
    (tmp_path / ".env.local").write_text(f"JWT_SECRET={SECRET}\nMONGODB_URI={MONGO}\n")
    settings = config.load(conf, environ={})
    # The loader did read them: they exist in Settings, and must stay there.
    assert (settings.auth.jwt_secret, settings.store.mongodb_uri) == (SECRET, MONGO)
    for daemon in (False, True):
        options = LaunchdOptions(config=conf, workdir=tmp_path, daemon=daemon, user="ollama")
        for name, content in Generator(settings, options, tmp_path / "out").files().items():
            for secret in (SECRET, MONGO, "hunter2", "JWT_SECRET=", "MONGODB_URI"):
                assert secret.encode() not in content, f"{secret!r} in {name}"


def test_only_local_endpoints_get_an_instance_job() -> None:
    remote = GroupSettings(
        name="remote",
        models=("*",),
        endpoints=("http://10.0.0.7:11434", "http://localhost:11600", "http://[::1]:11601"),
        slots=4,
        keep_alive="-1",
    )
    settings = Settings(groups=(remote,))
    instances = launchd.local_instances(settings)
    assert [(i.host, i.port) for i in instances] == [("127.0.0.1", 11600), ("[::1]", 11601)]
    options = LaunchdOptions(config=SHIPPED, workdir=REPO)
    job = Generator(settings, options, REPO / "launchd").ollama_job(instances[0])
    assert job["EnvironmentVariables"] == {
        "OLLAMA_HOST": "127.0.0.1:11600",
        "OLLAMA_NUM_PARALLEL": "4",
        "OLLAMA_KEEP_ALIVE": "-1",
    }


def test_daemon_variant_runs_as_the_named_user_from_boot() -> None:
    generator = shipped_generator(daemon=True, user="studio")
    files = generator.files()
    for job in plists(files).values():
        assert job["UserName"] == "studio"
        assert job["EnvironmentVariables"]["HOME"] == "@HOME@"
    script = files["install.sh"].decode()
    assert "MODE=daemon" in script
    assert "RUN_AS=studio" in script
    with pytest.raises(ValueError, match="--user"):
        shipped_generator(daemon=True)


def test_generate_command_writes_files_and_removes_stale_jobs(tmp_path: Path) -> None:
    out = tmp_path / "launchd"
    out.mkdir()
    (out / "com.olbproxy.ollama.11999.plist").write_text("stale")
    parser = argparse.ArgumentParser(prog="olbproxy")
    launchd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["launchd", "generate", "--config", str(SHIPPED), "--out", str(out), "--workdir", str(REPO)]
    )
    assert args.func(args) == 0
    assert not (out / "com.olbproxy.ollama.11999.plist").exists()
    assert {p.name for p in out.iterdir()} == set(shipped_generator().files())
    # Output elsewhere: the install script finds the checkout relative to itself.
    assert 'WORKDIR="$(cd "$HERE"/' in (out / "install.sh").read_text()


STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
if [[ $(basename "$0") == launchctl && $1 == print ]]; then exit 113; fi
exit 0
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_install_script_installs_and_uninstalls_with_launchctl(tmp_path: Path) -> None:
    """Run install.sh against stand-ins for launchctl, plutil and lsof: a Mac in a box."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "launchd", checkout / "launchd")
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("launchctl", "plutil", "lsof"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["STUB_LOG"] = str(log)
    script = checkout / "launchd" / "install.sh"

    done = subprocess.run([script, "install"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    agents = home / "Library" / "LaunchAgents"
    labels = sorted(p.stem for p in agents.iterdir())
    assert labels == sorted(plists(shipped_generator().files()))
    proxy = plistlib.loads((agents / "com.olbproxy.proxy.plist").read_bytes())
    assert proxy["WorkingDirectory"] == str(checkout)
    assert proxy["ProgramArguments"][0] == f"{checkout}/.venv/bin/olbproxy"
    assert proxy["StandardOutPath"] == f"{home}/Library/Logs/olbproxy/proxy.log"
    assert (home / "Library" / "Logs" / "olbproxy").is_dir()
    calls = log.read_text().splitlines()
    domain = f"gui/{os.getuid()}"
    for label in labels:
        assert f"launchctl bootstrap {domain} {agents}/{label}.plist" in calls
    assert (
        calls.index(f"launchctl bootstrap {domain} {agents}/com.olbproxy.proxy.plist")
        == len(calls) - 1
    ), "the proxy starts last"

    # A job of an older config is removed by the next install.
    (agents / "com.olbproxy.ollama.11999.plist").write_text("old")
    done = subprocess.run([script, "install"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (agents / "com.olbproxy.ollama.11999.plist").exists()
    assert f"launchctl bootout {domain}/com.olbproxy.ollama.11999" in log.read_text()

    done = subprocess.run([script, "status"], env=env, capture_output=True, text=True)
    assert done.returncode == 0
    assert "not loaded" in done.stdout

    log.write_text("")
    done = subprocess.run([script, "uninstall"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(agents.iterdir()) == []
    calls = log.read_text().splitlines()
    assert calls[0] == f"launchctl bootout {domain}/com.olbproxy.proxy", "the proxy stops first"


def test_install_refuses_while_ollama_app_holds_the_proxy_port(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "lsof").write_text("#!/bin/bash\necho p123\necho cOllama\n")
    (bin_dir / "launchctl").write_text("#!/bin/bash\nexit 113\n")
    for tool in ("lsof", "launchctl"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        [REPO / "launchd" / "install.sh", "install"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "Ollama.app" in done.stderr
    assert "11434" in done.stderr
    assert not (tmp_path / "Library" / "LaunchAgents").exists()
