"""Worker: the recording process, ``python -m olbproxy.persistence.worker``.

Started by the relay's hand-off (handoff.py), one per proxy. It runs the recorder
(recorder.py: records, filing, MongoDB, the spool) on an event loop of its own, so the
relay's loop never builds a record, files one or encodes BSON, and a core the relay
leaves idle does that work.

Its standard input carries, first, its settings (a length-prefixed JSON document, not
the command line: the MongoDB URI may hold a password), then frames (frame.py) until
end of input. Its standard output carries reports, one JSON object per line, whenever
they change (at most every REPORT_EVERY seconds)::

    {"ready": true}                             once the spool is open and it records
    {"failed": "why"}                           it cannot start (the spool is locked...)
    {"settled": n, "queue": q, "spool": s, "spooling": b, "stats": {...}}

``settled`` counts the exchanges, of all received, that no longer need the relay's
copy: written to MongoDB, in the fsync'd spool, or given up as unrecordable. The
recorder settles them in the order they came (recorder.py keeps that order for
filing), so the relay drops that many of its oldest copies.

End of input is the signal to stop: the queue is written (or spooled) and the process
exits. SIGINT and SIGTERM are ignored: a Ctrl-C in a terminal reaches the whole process
group, and the relay, which is still sending, decides when recording ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import struct
import sys
from typing import Any

from olbproxy.errors import StartupError
from olbproxy.exchange import Exchange
from olbproxy.logs import Logs
from olbproxy.persistence.frame import FORGET, HEAD, RESENT, FrameError, decode, size
from olbproxy.persistence.recorder import Recorder
from olbproxy.settings import StoreSettings
from olbproxy.supervisor import Supervisor

log = logging.getLogger("olbproxy.persistence.worker")

LENGTH = struct.Struct("!I")
REPORT_EVERY = 0.05  # seconds


class Worker:
    """Frames in, reports out, the recorder in between."""

    def __init__(self, settings: StoreSettings, recorder: Recorder, out: asyncio.WriteTransport):
        self.settings = settings
        self.recorder = recorder
        self.out = out
        self.received = 0
        self._last: dict[str, Any] = {}

    def report(self, **extra: Any) -> None:
        recorder = self.recorder
        backlog = recorder.backlog()
        state = {
            "settled": self.received - backlog["queue"],
            "queue": backlog["queue"],
            "spool": backlog["spool"],
            "spooling": recorder.spooling,
            "stats": dict(recorder.stats),
            **extra,
        }
        if state != self._last:
            self._last = state
            self.out.write(json.dumps(state).encode() + b"\n")

    async def reporting(self) -> None:
        while True:
            self.report()
            await asyncio.sleep(REPORT_EVERY)

    async def receive(self, reader: asyncio.StreamReader) -> None:
        """Frames until end of input."""
        while True:
            try:
                head = await reader.readexactly(HEAD.size)
                frame = head + await reader.readexactly(size(head))
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.error("persistence: the relay's last frame was cut short")
                return
            try:
                kind, item = decode(frame)
            except FrameError as exc:  # a bug, not an attack: the relay wrote it
                log.error("persistence: a frame from the relay is unreadable (%s)", exc)
                self.received += 1
                continue
            if kind == FORGET:
                assert isinstance(item, str)
                self.recorder.forget(item)
                continue
            assert isinstance(item, Exchange)
            self.received += 1
            self.recorder.observe(item, resent=kind == RESENT)


async def _settings(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    value: dict[str, Any] = json.loads(await reader.readexactly(length))
    return value


async def main() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(1, "wb", buffering=0))
    config = await _settings(reader)
    logs = Logs(config["log_level"], config["log_format"], path=config["log_file"])
    logs.start()
    try:
        return await _record(StoreSettings(**config["store"]), config["instance"], reader, out)
    finally:
        logs.stop()


def _yield_cores(nice: int) -> None:
    """Run behind the relay when the cores are busy: Linux's SCHED_IDLE runs this
    process only on a core nothing else wants; elsewhere (macOS), niceness."""
    if not nice:
        return
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        try:
            os.sched_setscheduler(0, idle, os.sched_param(0))
            return
        except OSError:
            pass
    os.nice(nice)


async def _record(
    settings: StoreSettings,
    instance: str | None,
    reader: asyncio.StreamReader,
    out: asyncio.WriteTransport,
) -> int:
    from olbproxy.store.mongo import MongoStore

    _yield_cores(settings.nice)
    store = MongoStore(settings)
    recorder = Recorder(settings, store, instance=instance)
    worker = Worker(settings, recorder, out)
    supervisor = Supervisor()
    try:
        await store.start()
        await recorder.start(supervisor)
    except StartupError as exc:
        out.write(json.dumps({"failed": str(exc)}).encode() + b"\n")
        await store.close()
        return 1
    out.write(b'{"ready": true}\n')
    reports = asyncio.create_task(worker.reporting())
    try:
        await worker.receive(reader)
    finally:
        await recorder.close()
        reports.cancel()
        worker.report(closed=True)
        await store.close()
        out.close()
    return 0


if __name__ == "__main__":  # pragma: no cover - run by the hand-off, tested through it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main()))
    sys.exit(uvloop.run(main()))
