"""A real MongoDB wire-protocol server for tests: SecantusDB in its own venv.

SecantusDB (GPL-2.0) is a test tool only; `make test` installs it into .venv-secantus
and passes its launcher in OLBPROXY_SECANTUSD. The server runs as a subprocess so
that fault tests can stop and restart it like a real mongod.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path


def launcher() -> str | None:
    candidates = [
        os.environ.get("OLBPROXY_SECANTUSD"),
        str(Path(__file__).resolve().parent.parent / ".venv-secantus" / "bin" / "secantusd-py"),
        shutil.which("secantusd-py"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MongoServer:
    """One secantusd process on a fixed port and data directory; stop/start keep both."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    async def start(self) -> None:
        exe = launcher()
        if exe is None:
            raise RuntimeError(
                "secantusd-py not found: run `make test`, or set OLBPROXY_SECANTUSD "
                "to the launcher of a venv with SecantusDB==0.7.0b3"
            )
        # A plain Popen, not asyncio's: the session-wide server outlives the event loop of
        # the fixture that starts it. Spawning does not block in any way that matters.
        self.process = subprocess.Popen(  # noqa: ASYNC220
            [
                exe,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                str(self.data_dir),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=sys.stderr,
        )
        for _ in range(300):
            if self.process.poll() is not None:
                raise RuntimeError(f"secantusd exited with {self.process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError("secantusd did not start listening within 15 s")

    async def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        # It holds a lock on its data directory until it has exited.
        await asyncio.to_thread(self.process.wait, 30)
        self.process = None
