"""`olbproxy serve` as a process: graceful shutdown on SIGTERM, routing reload on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from conftest import StartSims
from mongo import free_port

CHAT = {"model": "gpt-oss:20b", "messages": [{"role": "user", "content": "hi"}]}


def write_config(path: Path, port: int, endpoints: list[str], **group: object) -> None:
    extra = "".join(f"    {k}: {v}\n" for k, v in group.items())
    path.write_text(
        f"""
listen: 127.0.0.1:{port}
shutdown_deadline: 20
health: {{interval: 0.5}}
auth: {{enabled: false}}
store: {{backend: memory}}
groups:
  - name: 20b
    models: ["gpt-oss:20b"]
    endpoints: {json.dumps(endpoints)}
{extra}""",
        encoding="utf-8",
    )


class Served:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url


# Starts `olbproxy serve` with a config file and the port it listens on.
Serve = Callable[[Path, int], Awaitable[Served]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    started: list[asyncio.subprocess.Process] = []

    async def start(config: Path, port: int) -> Served:
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_ENDPOINTS", "JWT_SECRET")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "olbproxy",
            "serve",
            "--config",
            str(config),
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        started.append(process)
        assert process.stderr is not None
        while b"olbproxy listening on" not in (
            line := await asyncio.wait_for(process.stderr.readline(), 20)
        ):
            assert line, "olbproxy serve exited before listening"
        # Keep draining stderr so the process never blocks on a full pipe.
        asyncio.get_running_loop().create_task(process.stderr.read())
        return Served(process, f"http://127.0.0.1:{port}")

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_stream(http: aiohttp.ClientSession, url: str) -> list[dict[str, object]]:
    async with http.post(url + "/api/chat", json=CHAT) as resp:
        assert resp.status == 200
        return [json.loads(line) for line in (await resp.read()).splitlines()]


async def test_sigterm_lets_50_active_streams_finish_and_exits_zero(
    start_sims: StartSims, serve: Serve, tmp_path: Path
) -> None:
    sims = await start_sims(2, tokens_per_second=20, answer_tokens=30)  # 1.5 s answers
    port = free_port()
    config = tmp_path / "olbproxy.yaml"
    write_config(config, port, [s.url for s in sims], slots=25)
    served: Served = await serve(config, port)
    async with aiohttp.ClientSession() as http:
        streams = [asyncio.create_task(read_stream(http, served.url)) for _ in range(50)]
        await sims[0].wait_until(lambda: sum(s.stats.active for s in sims) == 50, timeout=10)
        served.process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*streams)
        # New connections are refused once shutdown has begun.
        with pytest.raises(aiohttp.ClientConnectionError):
            await read_stream(http, served.url)
    assert all(lines[-1].get("done") is True for lines in results)
    assert await asyncio.wait_for(served.process.wait(), 20) == 0
    assert sum(s.stats.completed for s in sims) == 50


async def test_sighup_reloads_routing_without_dropping_streams(
    start_sims: StartSims, serve: Serve, tmp_path: Path
) -> None:
    old, new = await start_sims(2, tokens_per_second=20, answer_tokens=30)
    port = free_port()
    config = tmp_path / "olbproxy.yaml"
    write_config(config, port, [old.url])
    served: Served = await serve(config, port)
    async with aiohttp.ClientSession() as http:
        running = asyncio.create_task(read_stream(http, served.url))
        await old.wait_until(lambda: old.stats.active == 1)
        write_config(config, port, [new.url])
        served.process.send_signal(signal.SIGHUP)
        # Poll until the new table routes new requests to the new backend.
        for _ in range(100):
            lines = await read_stream(http, served.url)
            if str(lines[0]["message"]).find("[sim2]") >= 0:
                break
        else:
            pytest.fail("the reloaded routing table never took effect")
        first = await running
    assert first[-1].get("done") is True
    assert old.stats.completed >= 1 and old.stats.cancelled == 0
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 20) == 0


async def test_serve_with_a_bad_config_names_the_key_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("groups: [{name: a, models: [x], endpoints: [nope]}]\n", encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "olbproxy",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert b"groups[0].endpoints[0]" in err and str(config).encode() in err


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`olbproxy ...` as a process of its own: exit status and everything on stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "olbproxy",
        *argv,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


def taken(port: int, *, listening: bool) -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    if listening:
        holder.listen()
    return holder


@pytest.mark.parametrize("listening", [True, False], ids=["another-server", "bound-only"])
async def test_serve_on_a_taken_port_says_so_in_one_line_and_exits_1(
    tmp_path: Path, listening: bool
) -> None:
    port = free_port()
    config = tmp_path / "olbproxy.yaml"
    write_config(config, port, ["http://127.0.0.1:1"])
    with taken(port, listening=listening):
        code, err = await run_cli("serve", "--config", str(config))
    assert code == 1
    assert err.splitlines()[-1] == (
        f"olbproxy: cannot listen on 127.0.0.1:{port}: the port is in use by another program; "
        f"`lsof -nP -iTCP:{port} -sTCP:LISTEN` shows which program holds it; or set another "
        "port in the config's listen"
    )
    assert "Traceback" not in err and "Unclosed" not in err
    if listening:  # found before anything started: nothing else was said
        assert len(err.splitlines()) == 1


def test_the_hint_for_ollamas_own_port_names_ollama_app() -> None:
    from olbproxy.server import port_error

    message = port_error("0.0.0.0", 11434, None).message
    assert "Ollama.app listens there unless moved" in message
    assert "OLLAMA_HOST=127.0.0.1:11400" in message


async def test_demo_on_a_taken_port_says_so_in_one_line_and_exits_1() -> None:
    port = free_port()
    with taken(port, listening=True):
        code, err = await run_cli("demo", "--port", str(port))
    assert code == 1
    assert err.splitlines() == [
        f"olbproxy: cannot listen on 127.0.0.1:{port}: the port is in use by another program; "
        f"`lsof -nP -iTCP:{port} -sTCP:LISTEN` shows which program holds it; or run: "
        f"olbproxy demo --port {port + 66}"
    ]


async def test_a_spool_held_by_another_proxy_is_one_line_and_exit_1(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "spool").mkdir()
    configs = []
    for name in ("first", "second"):
        port = free_port()
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{port}\nauth: {{enabled: false}}\n"
            f"store: {{spool_dir: {tmp_path / 'spool'}, timeout: 0.3}}\n"
            'groups: [{name: a, models: ["*"], endpoints: ["http://127.0.0.1:1"]}]\n',
            encoding="utf-8",
        )
        configs.append((config, port))
    # MongoDB does not answer (nothing listens on port 1): the spool is what matters.
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/olb?directConnection=true")
    await serve(*configs[0])
    code, err = await run_cli("serve", "--config", str(configs[1][0]))
    assert code == 1
    assert err.splitlines()[-1] == (
        f"olbproxy: store.spool_dir: {tmp_path / 'spool'} is in use by another olbproxy "
        "process; stop that one, or give each proxy a spool directory of its own"
    )
    assert "Traceback" not in err and "Unclosed" not in err
