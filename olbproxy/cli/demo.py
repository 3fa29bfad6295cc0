"""``olbproxy demo``: the seed's two groups on simulated Ollama backends, and the proxy.

For a machine with no Ollama and no MongoDB: five simulators stand in for the
Mac Studio's instances, persistence (users, keys and the recorded conversations) is
kept in memory, and a demo user is created whose API key and token the printed
example commands carry. Authentication is on, as in ``serve``, with a random secret
that dies with the process.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shlex
import socket
import sys
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from olbproxy.app import AUTHENTICATOR, create_app
from olbproxy.server import check_port, run, serve
from olbproxy.settings import GroupSettings, Settings
from olbproxy.simulator import DEFAULT_MODELS, OllamaSimulator

DEMO_USER = "demo"

SEED_LAYOUT = (
    ("20b", "gpt-oss:20b", (11435, 11436, 11437)),
    ("120b", "gpt-oss:120b", (11531, 11532)),
)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_settings(host: str, port: int, groups: tuple[GroupSettings, ...]) -> Settings:
    settings = Settings(listen_host=host, listen_port=port, groups=groups, source="<demo>")
    return replace(
        settings,
        auth=replace(settings.auth, jwt_secret=secrets.token_urlsafe(48)),
        store=replace(settings.store, backend="memory"),
        health=replace(settings.health, interval=2.0),
    )


async def _main(host: str, port: int) -> None:
    # Before five simulators start: the port the proxy needs must be free.
    elsewhere = f"or run: olbproxy demo --port {port + 66}"
    await check_port(host, port, elsewhere=elsewhere)
    simulators: list[OllamaSimulator] = []
    groups: list[GroupSettings] = []
    for name, model, ports in SEED_LAYOUT:
        urls = []
        for i, wanted in enumerate(ports):
            sim = OllamaSimulator(
                name=f"{name}-{i + 1}",
                models=DEFAULT_MODELS,
                tokens_per_second=25,
                answer_tokens=40,
            )
            url = await sim.start(port=wanted if _free(wanted) else 0)
            simulators.append(sim)
            urls.append(url)
        # Four slots per simulated instance, so a few demo users can stream at once.
        groups.append(GroupSettings(name=name, models=(model,), endpoints=tuple(urls), slots=4))
    settings = demo_settings(host, port, tuple(groups))
    app = await create_app(settings)
    demo: dict[str, str] = {}

    async def add_demo_user(app: web.Application) -> None:
        # on_startup runs after cleanup_ctx has opened the (memory) store.
        accounts = app[AUTHENTICATOR].accounts
        demo["password"] = secrets.token_urlsafe(9)
        await accounts.add_user(DEMO_USER, demo["password"], role="admin")
        demo["key"] = (await accounts.create_key(DEMO_USER, label="demo"))[1]
        demo["token"] = (await accounts.issue_token(DEMO_USER))[0]

    app.on_startup.append(add_demo_user)

    def ready(addresses: list[str]) -> None:
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        bearer = f'-H "Authorization: Bearer {demo["key"]}"'
        lines = [
            "",
            "olbproxy demo is running (simulated Ollama backends, nothing is stored on disk)",
            "Store: in memory, no MongoDB. Users, keys and conversations (rooms, messages)",
            "are kept in this process and are gone when it stops.",
            *(f"  group {g.name:5} {g.models[0]:14} -> {', '.join(g.endpoints)}" for g in groups),
            "",
            f"Web page: {base}/ui/  (log in as {DEMO_USER} / {demo['password']})",
            "",
            f"Demo user {DEMO_USER!r} (admin), password {demo['password']}",
            f"  API key: {demo['key']}",
            f"  token:   {demo['token']}",
            "",
            "Try it:",
            f"  curl {bearer} {base}/api/chat -d "
            '\'{"model":"gpt-oss:20b","messages":[{"role":"user","content":"hello"}]}\'',
            f"  curl {bearer} {base}/api/tags",
            f"  curl {bearer} {base}/api/rooms          # the conversations recorded so far",
            f"  curl {base}/api/tags          # 401: every API call needs a token or key",
            f"  curl {base}/api/auth/login -d "
            f'\'{{"username":"{DEMO_USER}","password":"{demo["password"]}"}}\'',
            *python_lines(base, demo["token"], demo["key"]),
            "",
            "Stop with Ctrl-C.",
        ]
        print("\n".join(lines), flush=True)

    try:
        await serve(settings, app=app, ready=ready, elsewhere=elsewhere)
    finally:
        for sim in simulators:
            await sim.stop()


def python_lines(base: str, token: str, key: str) -> list[str]:
    """The `ollama` library examples, with a Python that has the library, or how to get it."""
    python = shlex.quote(os.path.relpath(sys.executable))
    lines = [
        f"  {python} -c \"import ollama; c = ollama.Client(host='{base}', "
        f"headers={{'Authorization': 'Bearer {token}'}}); "
        "print(c.chat(model='gpt-oss:120b', messages=[{'role':'user','content':'hi'}])"
        '.message.content)"',
        f'  OLLAMA_API_KEY={key} {python} -c "import ollama; '
        f"print(ollama.Client(host='{base}').list())\"",
    ]
    if importlib.util.find_spec("ollama") is None:
        # `make demo` installs the proxy only; the `ollama` client comes with `make test`.
        pip = shlex.quote(os.path.relpath(Path(sys.executable).with_name("pip")))
        lines.insert(0, f"  {pip} install ollama     # the library is not installed here yet")
    return lines


def run_demo(*, host: str = "127.0.0.1", port: int = 11434) -> int:
    run(lambda: _main(host, port))
    return 0
