"""Spool: where records wait, on local disk, while MongoDB cannot take them.

Layout of ``store.spool_dir``::

    0000000001.jsonl   segments: one record per line (record.py), appended in order
    0000000002.jsonl   a new segment starts once the current one passes SEGMENT_BYTES
    cursor.json        {"segment": n, "offset": bytes}: everything before it is in MongoDB
    rejected.jsonl     records MongoDB refused outright (kept, never replayed by itself)
    .lock              held (flock) by the one process that owns this spool

Every append is one write of whole lines followed by ``fsync`` (and an fsync of the
directory when a segment is created): ``append`` returns only once its records would
survive a crash. A crash during an append can leave a partial last line; it was never
acknowledged, and ``open`` cuts it off. Replay reads from the cursor in order and moves
the cursor (written to a temporary file, fsync'd, renamed) only after MongoDB has
acknowledged the batch; fully replayed segments are deleted then, and the files go
away entirely when nothing is left. A record may thus be replayed twice after a crash,
never lost; the database ignores the second copy (message ids are exchange ids).

All file work runs in a worker thread, one operation at a time, so the event loop
never waits for the disk. Without a directory (the memory store of ``olbproxy demo``)
the same contract is kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from olbproxy.errors import StartupError

log = logging.getLogger("olbproxy.persistence.spool")

T = TypeVar("T")

SEGMENT_BYTES = 8 * 1024 * 1024
READ_BYTES = 16 * 1024 * 1024  # per replay batch, beyond its first line
_SUFFIX = ".jsonl"
CURSOR = "cursor.json"
REJECTED = "rejected.jsonl"
LOCK = ".lock"


@dataclass(frozen=True, slots=True)
class Batch:
    """Lines read from the spool, and where the spool stands once they are acknowledged."""

    lines: list[bytes]
    end: tuple[int, int]  # (segment, offset)


class Spool:
    """An append-only, fsync'd, replayable log of records (see the module docstring)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.depth = 0  # records appended and not yet acknowledged
        self._lock = asyncio.Lock()
        self._segments: list[int] = []
        self._cursor = (1, 0)
        self._writer: IO[bytes] | None = None
        self._size = 0  # of the last segment
        self._held: int | None = None  # the lock file's descriptor
        self._memory: deque[bytes] = deque()

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        return f"<Spool {where} depth={self.depth}>"

    # -- the async face: one operation at a time, in a worker thread ---------------------

    async def open(self) -> None:
        await self._run(self._open)

    async def append(self, lines: Sequence[bytes]) -> None:
        """Append records; returns once they are on disk (fsync'd)."""
        if lines:
            await self._run(self._append, lines)

    async def read(self, limit: int, after: Batch | None = None) -> Batch:
        """Up to ``limit`` records from the oldest unacknowledged one (or from the end of
        ``after``, read before and not acknowledged yet), in order."""
        return await self._run(self._read, limit, None if after is None else after.end)

    async def ack(self, batch: Batch) -> None:
        """The database holds these records now: move past them for good."""
        await self._run(self._ack, batch)

    async def reject(self, lines: Sequence[bytes]) -> None:
        """Set aside records the database refuses, for a person to look at."""
        await self._run(self._reject, lines)

    async def close(self) -> None:
        await self._run(self._close)

    async def _run(self, operation: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            work = asyncio.ensure_future(asyncio.to_thread(operation, *args))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The thread cannot be stopped: keep the lock until it is done, so the
                # next operation never runs beside it.
                await asyncio.wait([work])
                if not work.cancelled():
                    work.exception()  # seen: it cannot be raised any more
                raise

    # -- files ------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        assert self.directory is not None
        return self.directory / f"{segment:010d}{_SUFFIX}"

    def _take(self) -> None:
        """Create the directory if needed and hold its lock: one process per spool."""
        if self._held is not None or self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StartupError(
                f"store.spool_dir: {self.directory} is in use by another olbproxy process; "
                "stop that one, or give each proxy a spool directory of its own"
            ) from None
        self._held = fd

    def _open(self) -> None:
        if self.directory is None or not self.directory.is_dir():
            return  # created with the first append: a spool never used leaves no trace
        self._take()
        names = (p.name for p in self.directory.iterdir())
        self._segments = sorted(int(n[: -len(_SUFFIX)]) for n in names if _is_segment(n))
        self._cursor = self._read_cursor()
        for segment in [s for s in self._segments if s < self._cursor[0]]:
            self._path(segment).unlink()  # replayed before a crash cut the cleanup short
            self._segments.remove(segment)
        if self._segments and self._segments[0] > self._cursor[0]:
            self._cursor = (self._segments[0], 0)
        if self._segments:
            self._repair(self._segments[-1])
        self.depth = self._count()
        if not self._segments:
            # A crash between deleting the last segment and the cursor: the cursor is stale.
            (self.directory / CURSOR).unlink(missing_ok=True)
            self._cursor = (self._next(), 0)

    def _read_cursor(self) -> tuple[int, int]:
        assert self.directory is not None
        first = self._segments[0] if self._segments else 1
        try:
            data = json.loads((self.directory / CURSOR).read_bytes())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return first, 0
        except (ValueError, KeyError, TypeError) as exc:
            # Replaying from the start is safe: the database ignores what it has.
            log.warning("spool cursor unreadable (%s): replaying the spool from its start", exc)
            return first, 0

    def _repair(self, segment: int) -> None:
        """Cut a partial last line left by a crash in the middle of an append."""
        path = self._path(segment)
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            log.warning(
                "spool %s ends with %d bytes of an unfinished append (a crash): cut off",
                path.name,
                len(data) - keep,
            )
            with path.open("r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def _count(self) -> int:
        count = 0
        for segment in self._segments:
            with self._path(segment).open("rb") as f:
                if segment == self._cursor[0]:
                    f.seek(self._cursor[1])
                count += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        return count

    def _next(self) -> int:
        return (self._segments[-1] + 1) if self._segments else max(self._cursor[0], 1)

    def _append(self, lines: Sequence[bytes]) -> None:
        if self.directory is None:
            self._memory.extend(lines)
            self.depth += len(lines)
            return
        self._take()
        if self._writer is None or self._size >= SEGMENT_BYTES:
            self._roll()
        assert self._writer is not None
        data = b"".join(line + b"\n" for line in lines)
        try:
            self._writer.write(data)
            self._writer.flush()
            os.fsync(self._writer.fileno())
        except OSError:
            # Leave no partial line behind for the next append to extend.
            self._writer.close()
            self._writer = None
            self._repair(self._segments[-1])
            raise
        self._size += len(data)
        self.depth += len(lines)

    def _roll(self) -> None:
        """Continue the last segment, or start a new one once it is full."""
        assert self.directory is not None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._segments and self._path(self._segments[-1]).stat().st_size < SEGMENT_BYTES:
            segment = self._segments[-1]
        else:
            segment = self._next()
            self._segments.append(segment)
        path = self._path(segment)
        created = not path.exists()
        self._writer = path.open("ab")
        self._size = self._writer.tell()
        if created:
            _sync_dir(self.directory)  # the new file's name must survive a crash too

    def _read(self, limit: int, start: tuple[int, int] | None = None) -> Batch:
        if self.directory is None:
            first = 0 if start is None else start[1]
            taken = [self._memory[i] for i in range(first, min(first + limit, len(self._memory)))]
            return Batch(taken, (0, first + len(taken)))
        lines: list[bytes] = []
        segment, offset = start or self._cursor
        size = 0
        while len(lines) < limit and segment in self._segments:
            with self._path(segment).open("rb") as f:
                f.seek(offset)
                while len(lines) < limit and (size < READ_BYTES or not lines):
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        break  # end of what was appended
                    lines.append(line[:-1])
                    offset += len(line)
                    size += len(line)
            if len(lines) >= limit or size >= READ_BYTES:
                break
            later = [s for s in self._segments if s > segment]
            if not later:
                break
            segment, offset = later[0], 0
        return Batch(lines, (segment, offset))

    def _ack(self, batch: Batch) -> None:
        self.depth = max(0, self.depth - len(batch.lines))
        if self.directory is None:
            for _ in batch.lines:
                self._memory.popleft()
            return
        self._cursor = batch.end
        if self.depth == 0:
            # Everything is in the database: start afresh with no files at all.
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            following = self._next()
            for segment in self._segments:
                self._path(segment).unlink(missing_ok=True)
            (self.directory / CURSOR).unlink(missing_ok=True)
            self._segments = []
            self._cursor = (following, 0)
            return
        self._write_cursor()
        for segment in [s for s in self._segments if s < self._cursor[0]]:
            self._path(segment).unlink(missing_ok=True)
            self._segments.remove(segment)

    def _write_cursor(self) -> None:
        assert self.directory is not None
        segment, offset = self._cursor
        temporary = self.directory / (CURSOR + ".tmp")
        with temporary.open("wb") as f:
            f.write(json.dumps({"segment": segment, "offset": offset}).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.directory / CURSOR)
        _sync_dir(self.directory)

    def _reject(self, lines: Sequence[bytes]) -> None:
        if self.directory is None:
            return  # nothing refuses a record in memory
        self._take()
        with (self.directory / REJECTED).open("ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._held is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._held, fcntl.LOCK_UN)
            os.close(self._held)
            self._held = None


def _is_segment(name: str) -> bool:
    return name.endswith(_SUFFIX) and name[: -len(_SUFFIX)].isdigit()


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
