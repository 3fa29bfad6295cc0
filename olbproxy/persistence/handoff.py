"""Handoff: the recorder's face in the relay's process when recording runs in a process
of its own (``store.recorder: process``, worker.py).

::

    handler's finally ─observe()─► frame ─pipe─► recording process ─► MongoDB / its spool
                                     │ kept until the process reports it settled
                                     │ queue_bytes of frames unsettled already:
                                     ▼
                                   overflow.py (disk, fsync'd: spool_dir/handoff) ─► pipe, later

* ``observe`` encodes one frame (frame.py) and queues it for the pipe; the frames of a
  loop turn go out in one write. Nothing on the request path waits for the process,
  MongoDB or the disk.
* Every frame is kept (bytes: the garbage collector never walks them) until the
  process reports it settled: written to MongoDB, in its fsync'd spool, or given up.
  If the process dies, it is started again and the unsettled frames are resent,
  marked ``RESENT`` (they may be in MongoDB already: the replay looks before it files).
* With ``queue_bytes`` of frames unsettled (the process cannot keep up, or is starting
  again), new frames go to the overflow on disk, in order, and are sent from there once
  half that is; while the overflow holds frames, new
  ones line up behind them, so records still reach MongoDB in the order their
  exchanges finished.
* While the relay's process is busy, frames wait here before the pipe (pace.py): the
  recording process and MongoDB then leave the cores to relaying.
* ``close``: the end of the pipe tells the process to write (or spool) its queue and
  exit. Frames it did not settle, and those still held for the overflow, go to the
  overflow, and the next start sends them first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import itertools
import json
import logging
import sys
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from olbproxy.errors import StartupError
from olbproxy.exchange import Exchange
from olbproxy.persistence.filing import Filing
from olbproxy.persistence.frame import encode, forget, resent
from olbproxy.persistence.history import RECORDED
from olbproxy.persistence.overflow import OVERFLOW, UNLOAD, keep_for_the_next_start
from olbproxy.persistence.pace import PACE, Pace
from olbproxy.persistence.spool import Spool
from olbproxy.persistence.worker import LENGTH
from olbproxy.settings import Settings
from olbproxy.store import Store
from olbproxy.supervisor import Supervisor

log = logging.getLogger("olbproxy.persistence.handoff")

WORKER = (sys.executable, "-m", "olbproxy.persistence.worker")
START_SECONDS = 30.0  # for the process to import, open its spool and say it is ready


class Handoff:
    """Frames to the recording process (see the module docstring); the recorder's API."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        instance: str | None = None,
        command: Sequence[str] = WORKER,
    ) -> None:
        self.settings = settings.store
        self._config = json.dumps(
            {
                "store": dataclasses.asdict(settings.store),
                "instance": instance,
                "log_level": settings.log_level,
                "log_format": settings.log_format,
                "log_file": settings.log_file,
            }
        ).encode()
        self._command = tuple(command)
        # Room owners for the rooms API's preflight; this one never files a record.
        self.filing = Filing(store)
        self.overflow = Spool(Path(settings.store.spool_dir) / OVERFLOW)
        self.spooling = False  # the process's recorder is spooling
        self.stats: Counter[str] = Counter()
        self._limit = max(1, settings.store.queue_bytes)
        # How long a stop waits for the process to write (or spool) its queue and exit.
        self.stop_seconds = settings.store.timeout * 2 + 15
        self._unsettled: deque[bytes] = deque()
        self._unsettled_bytes = 0  # what the unsettled frames hold: the memory bound
        self._written = 0  # of the unsettled, the oldest this many went to the process
        # While the relay is busy, frames wait here (pace.py).
        self.pace = Pace(settings.store.defer)
        self._outgoing: list[bytes] = []
        self._held: list[bytes] = []  # for the overflow, not on disk yet
        self._overflowing = False
        self._pipe: asyncio.StreamWriter | None = None
        self._settled = 0  # as the running process counts them
        self._spool = 0  # records in the process's spool
        self._earlier: Counter[str] = Counter()  # stats of processes before this one
        self._ready: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<Handoff backlog={self.backlog()} {dict(self.stats)}>"

    # -- the request side ------------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        """An ``OllamaApi`` observer: one frame, queued; nothing awaited."""
        if exchange.endpoint not in RECORDED:
            return
        if self._closed:
            log.error("persistence has stopped: the record of exchange %s is lost", exchange.id)
            return
        try:
            frame = encode(exchange)
        except (TypeError, ValueError):  # a bug must cost one record, not the request
            log.exception(
                "persistence: cannot hand over exchange %s; its record is lost", exchange.id
            )
            return
        if self._overflowing or self._full():
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "persistence: %d records (%d MiB) wait for the recording process; "
                    "the next ones wait on disk (%s)",
                    len(self._unsettled),
                    self._unsettled_bytes >> 20,
                    self.overflow.directory,
                )
            self._held.append(frame)
            self._wake.set()
            return
        self._send(frame)

    def forget(self, room_id: str) -> None:
        """The room was deleted (rooms API): here and in the recording process."""
        self.filing.forget(room_id)
        if self._pipe is not None:
            self._queue(forget(room_id))

    def backlog(self) -> dict[str, int]:
        """Records not in MongoDB yet: in memory (``queue``) and on disk (``spool``)."""
        held = len(self._held) + self.overflow.depth
        return {"queue": len(self._unsettled), "spool": self._spool + held}

    @property
    def pid(self) -> int | None:
        """The recording process's, while one runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    @property
    def idle(self) -> bool:
        """Everything observed so far is in the database."""
        return not self.spooling and not any(self.backlog().values())

    # Bounded by bytes, not by count: frames are bytes the garbage collector never walks,
    # and one of a 4 MiB conversation weighs as much as 4,000 small ones.
    def _full(self) -> bool:
        return self._unsettled_bytes >= self._limit

    def _has_room(self) -> bool:
        """Half the bound free again: the overflow may be sent."""
        return self._unsettled_bytes <= self._limit // 2

    def _send(self, frame: bytes) -> None:
        self._unsettled.append(frame)
        self._unsettled_bytes += len(frame)
        if self._pipe is not None and not self.pace.deferring:  # else sent later: _release
            self._queue(frame)
            self._written += 1

    def _release(self) -> None:
        """Send what waits in memory, when a process takes frames and nothing defers."""
        if self._pipe is None or self.pace.deferring:
            return
        for frame in itertools.islice(self._unsettled, self._written, None):
            self._queue(frame)
        self._written = len(self._unsettled)

    def _queue(self, frame: bytes) -> None:
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(frame)

    def _flush(self) -> None:
        frames, self._outgoing = self._outgoing, []
        if self._pipe is not None and frames:
            self._pipe.writelines(frames)

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the recording process; return once it records (``StartupError`` if not)."""
        supervisor = supervisor or Supervisor()
        await self.overflow.open()
        if self.overflow.depth:
            self._overflowing = True
            log.warning(
                "persistence: %d records of an earlier run wait in %s; they are sent first",
                self.overflow.depth,
                self.overflow.directory,
            )
        self._ready = asyncio.get_running_loop().create_future()
        self._tasks = [
            supervisor.spawn("recorder-process", self._run_process),
            supervisor.spawn("recorder-overflow", self._overflow_loop),
            supervisor.spawn("recorder-pace", self._pace_loop),
        ]
        try:
            async with asyncio.timeout(START_SECONDS):
                await asyncio.shield(self._ready)
        except BaseException:
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(self._tasks)
            await self.overflow.close()
            raise

    async def close(self) -> None:
        process, overflow, pace = self._tasks
        self._closing = True
        for task in (overflow, pace):
            task.cancel()
        await asyncio.wait([overflow, pace])
        self.pace.deferring = False
        self._release()
        self._flush()
        if self._pipe is not None:
            self._pipe.close()  # the end of input: the process writes its queue and exits
        await asyncio.wait([process], timeout=self.stop_seconds)
        if not process.done():
            log.error("persistence: the recording process did not stop; killing it")
            if self._process is not None and self._process.returncode is None:
                self._process.kill()
            process.cancel()
            await asyncio.wait([process])
        self._closed = True
        self._unsettled_bytes = 0  # the unsettled frames go to the overflow, just below
        try:
            await keep_for_the_next_start(self.overflow, self._unsettled, self._held)
        except OSError as exc:
            log.error(
                "persistence: records lost: cannot write %s (%s)", self.overflow.directory, exc
            )
        await self.overflow.close()

    # -- the recording process ---------------------------------------------------------------

    async def _run_process(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(LENGTH.pack(len(self._config)) + self._config)
        try:
            first = json.loads(await process.stdout.readline() or b"{}")
            if not first.get("ready"):
                code = await process.wait()
                # Its own reason is the one line an operator needs (a locked spool...).
                raise StartupError(
                    first.get("failed")
                    or f"persistence: the recording process exited with status {code} at start"
                )
            self._connected(process.stdin)
            async for line in process.stdout:
                self._reported(json.loads(line))
        except StartupError as exc:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(exc)
                return
            raise
        finally:
            self._lost_process()
            if process.returncode is None and not self._closing:
                process.kill()
            await process.wait()
        if not self._closing:
            raise RuntimeError(
                f"the recording process exited with status {process.returncode}; "
                f"{len(self._unsettled)} records are resent to the next one"
            )

    def _lost_process(self) -> None:
        self._pipe = None
        self._outgoing.clear()
        self._earlier = self.stats.copy()
        # The process may have written some of what it had before it died.
        for index in range(self._written):
            self._unsettled[index] = resent(self._unsettled[index])
        self._written = 0

    def _connected(self, pipe: asyncio.StreamWriter) -> None:
        self._settled = 0
        self._pipe = pipe
        self._release()
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        self._wake.set()

    def _reported(self, state: dict[str, Any]) -> None:
        settled = min(state.get("settled", self._settled), self._settled + self._written)
        for _ in range(settled - self._settled):
            self._unsettled_bytes -= len(self._unsettled.popleft())
        self._written -= settled - self._settled
        self._settled = settled
        self.spooling = bool(state.get("spooling"))
        self._spool = int(state.get("spool", 0))
        self.stats = self._earlier + Counter(state.get("stats", {}))
        if self._overflowing and self._has_room():
            self._wake.set()

    # -- relaying first (pace.py) -----------------------------------------------------------

    async def _pace_loop(self) -> None:
        if self.pace.limit <= 0:
            return
        self.pace.share()  # from now on: start-up's own work is not the relay being busy
        while True:
            await asyncio.sleep(PACE)
            if self.pace.look():
                self._release()
                self._wake.set()

    # -- the overflow: held -> disk -> pipe ---------------------------------------------------

    async def _overflow_loop(self) -> None:
        size = UNLOAD
        while True:
            self._wake.clear()
            if self._held:
                frames, self._held = self._held, []
                try:
                    await self.overflow.append([base64.b64encode(frame) for frame in frames])
                except OSError as exc:
                    self._held[:0] = frames
                    log.error("persistence: cannot write %s (%s)", self.overflow.directory, exc)
                    await asyncio.sleep(1.0)
                continue
            if self._overflowing and self._pipe is not None and self._has_room():
                await self._unload(size)
                continue
            await self._wake.wait()

    async def _unload(self, size: int) -> None:
        """Send the overflow's oldest frames, or end the overflow once it is empty."""
        batch = await self.overflow.read(size)
        for line in batch.lines:
            try:
                self._send(resent(base64.b64decode(line, validate=True)))
            except binascii.Error:
                log.error("persistence: an unreadable overflow line set aside")
                await self.overflow.reject([line])
        if batch.lines:
            await self.overflow.ack(batch)
        elif not self._held:
            self._overflowing = False
            log.info("persistence: the overflow is sent; frames go straight again")
