"""Recorder: every chat and generate exchange into MongoDB, never in the way, never lost.

::

    handler's finally ─observe()─► queue (bounded, memory) ─writer─► MongoDB
                           │ queue full, or spooling         │ failed
                           ▼                                 ▼
                         spill (memory, oldest first) ─spooler─► spool (disk, fsync'd)
                                                                   │
                           MongoDB answers again ◄──────replay─────┘

* ``observe`` is one of ``OllamaApi.observers``: it only appends the finished exchange
  to a deque. Nothing on the request path waits for MongoDB or the disk.
* The writer takes up to ``store.batch_size`` exchanges (lingering ~50 ms for a batch to
  gather), builds their records (record.py: the chunks are parsed here, once), files
  them into rooms (filing.py) and writes them with three bulk operations (batch.py).
* When a write fails, or the queue is full, the recorder starts *spooling*: what is
  still in memory goes to the spill, oldest first, then to the spool file, and so does
  every new record until the spool is empty again. Records thus reach MongoDB in the
  order their exchanges finished, which filing relies on (a turn is filed after the
  turn it continues).
* The replay task pings MongoDB with backoff, replays the spool in order, and returns
  to direct writes once the spool and the spill are empty. A record MongoDB refuses
  outright (rather than being down) is isolated and set aside in the spool's
  ``rejected.jsonl``, so one bad record cannot hold the others back.
* On shutdown the queue is written (or spooled) before the store closes; the spool is
  replayed by the next start.

``backlog()`` (records in memory and in the spool) feeds the metrics and the status page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque

from olbproxy.errors import ProxyError, Unavailable
from olbproxy.exchange import Exchange
from olbproxy.persistence.batch import write, write_replayed
from olbproxy.persistence.filing import Filing
from olbproxy.persistence.history import RECORDED
from olbproxy.persistence.record import Record, record_of
from olbproxy.persistence.spool import Spool
from olbproxy.settings import StoreSettings
from olbproxy.store import Store
from olbproxy.supervisor import Supervisor

log = logging.getLogger("olbproxy.persistence.recorder")

LINGER = 0.05  # seconds a partial batch waits for company (README, items 26-27)
BACKOFF = (0.25, 10.0)  # seconds between pings of an unreachable MongoDB: first, most
REPORT_EVERY = 5.0  # seconds between log lines about the spool while it changes

Item = Exchange | Record


class Recorder:
    """The persistence pipeline (see the module docstring)."""

    def __init__(
        self,
        settings: StoreSettings,
        store: Store,
        *,
        filing: Filing | None = None,
        spool: Spool | None = None,
        instance: str | None = None,
    ) -> None:
        self.settings = settings
        # The proxy process's instance id, written with each room's placement so that
        # its placement feed can leave out what it knows already (placements.py).
        self.instance = instance
        self.store = store
        self.filing = filing or Filing(store)
        # The memory store never fails; its spool (queue overflow only) stays in memory.
        self.spool = spool or Spool(None if settings.backend == "memory" else settings.spool_dir)
        self.linger = LINGER
        self.backoff = BACKOFF
        # True from the first failure (or overflow) until the spool has been replayed.
        self.spooling = False
        # written, spooled, replayed, rejected: for logs and tests.
        self.stats: Counter[str] = Counter()
        self._queue: deque[Exchange] = deque()
        self._spill: deque[Item] = deque()
        self._in_flight = 0  # records the writer is writing now
        self._spooling_now = 0  # records the spooler is appending now
        self._queued = asyncio.Event()
        self._spilled = asyncio.Event()
        self._settled = asyncio.Event()  # the writer has nothing in flight
        self._settled.set()
        self._progress = asyncio.Event()  # the spool grew, or the writer settled
        self._diverted = asyncio.Event()  # spooling began: wake the replay
        self._closing = False
        self._stopping = asyncio.Event()  # ends the writer's linger at shutdown
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._reported = 0.0

    def __repr__(self) -> str:
        mode = "spooling" if self.spooling else "direct"
        return f"<Recorder {mode} backlog={self.backlog()} {dict(self.stats)}>"

    # -- the request side ------------------------------------------------------------------

    def observe(self, exchange: Exchange, *, resent: bool = False) -> None:
        """An ``OllamaApi`` observer: take a finished exchange, without waiting for anything.
        ``resent``: it may be in MongoDB already (worker.py), so it goes through the
        spool's replay, which looks before it files."""
        if exchange.endpoint not in RECORDED:
            return
        if self._closed:
            log.error("persistence has stopped: the record of exchange %s is lost", exchange.id)
            return
        if self._closing:
            self._divert("shutting down")
        elif resent:
            self._divert("the relay resent records that may be in MongoDB already")
        elif not self.spooling and len(self._queue) >= self.settings.queue_size:
            self._divert(f"the queue is full ({len(self._queue)} records)")
        if self.spooling:
            self._spill.append(exchange)
            self._spilled.set()
            return
        self._queue.append(exchange)
        self._queued.set()

    def forget(self, room_id: str) -> None:
        """The room was deleted (rooms API)."""
        self.filing.forget(room_id)

    def backlog(self) -> dict[str, int]:
        """Records not in MongoDB yet: in memory (``queue``) and on disk (``spool``)."""
        memory = len(self._queue) + self._in_flight + len(self._spill) + self._spooling_now
        return {"queue": memory, "spool": self.spool.depth}

    @property
    def idle(self) -> bool:
        """Everything observed so far is in the database."""
        return not self.spooling and not any(self.backlog().values())

    def _divert(self, reason: str) -> None:
        if not self.spooling:
            self.spooling = True
            where = self.spool.directory or "memory"
            log.warning("persistence: %s; spooling records to %s", reason, where)
            self._diverted.set()
        # What is still queued is older than anything that comes next: it goes first.
        self._spill.extend(self._queue)
        self._queue.clear()
        if self._spill:
            self._spilled.set()

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self, supervisor: Supervisor | None = None) -> None:
        """Start the writer, the spooler and the replay, as jobs of ``supervisor``."""
        supervisor = supervisor or Supervisor()
        await self.spool.open()
        if self.spool.depth:
            self.spooling = True
            self._diverted.set()
            log.warning(
                "persistence: %d records wait in the spool %s; they are replayed in order "
                "once MongoDB answers, and new records line up behind them",
                self.spool.depth,
                self.spool.directory,
            )
        self._tasks = [
            supervisor.spawn("recorder-writer", self._write_loop),
            supervisor.spawn("recorder-spooler", self._spool_loop),
            supervisor.spawn("recorder-replay", self._replay_loop),
        ]

    async def close(self) -> None:
        writer, spooler, replay = self._tasks
        self._closing = True
        self._stopping.set()
        replay.cancel()  # the spool stays for the next start
        self._queued.set()
        # Give the queue a chance to reach MongoDB; what does not goes to the spool.
        await asyncio.wait([writer], timeout=self.settings.timeout * 2 + 1)
        if not writer.done():
            writer.cancel()
        await asyncio.wait([writer, replay])
        if self._queue:
            self._divert("shutting down")
        try:
            async with asyncio.timeout(self.settings.timeout * 2 + 10):
                while self._spill or self._spooling_now:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            pass
        spooler.cancel()
        await asyncio.wait([spooler])
        self._closed = True
        lost = len(self._spill) + len(self._queue)
        if lost:
            log.error("persistence: %d records could not be written to the spool: lost", lost)
        await self.spool.close()

    # -- the writer: queue -> MongoDB ---------------------------------------------------

    async def _write_loop(self) -> None:
        size = max(1, self.settings.batch_size)
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            if len(self._queue) < size and not self._closing:
                # Let a batch gather, unless shutdown begins.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.linger):
                        await self._stopping.wait()
                if not self._queue:  # diverted to the spill meanwhile
                    continue
            batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[Exchange]) -> None:
        self._in_flight = len(batch)
        self._settled.clear()
        pending: deque[Item] = deque(batch)
        records: list[Record] = []
        try:
            while pending:
                record = self._record(pending[0])
                pending.popleft()
                if record is not None:
                    records.append(record)
                await asyncio.sleep(0)  # a big batch must not hold streams up
            await write(self.store, self.filing, records, replay=False)
            self.stats["written"] += len(records)
        except (Exception, asyncio.CancelledError) as exc:
            if not isinstance(exc, ProxyError | asyncio.CancelledError):
                log.exception("persistence: writing a batch failed")
            reason = "shutting down" if isinstance(exc, asyncio.CancelledError) else str(exc)
            self._divert(f"MongoDB write failed ({reason})")
            # This batch is older than anything spilled meanwhile: it goes first.
            self._spill.extendleft(reversed([*records, *pending]))
            self._spilled.set()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._in_flight = 0
            self._settled.set()
            self._progress.set()

    def _record(self, item: Item) -> Record | None:
        if isinstance(item, Record):
            return item
        try:
            record = record_of(item, store_content=self.settings.store_content)
            record.by = self.instance
            return record
        except Exception:  # a bug must cost one record, not the pipeline
            log.exception("persistence: cannot build the record of exchange %s", item.id)
            return None

    # -- the spooler: spill -> disk ------------------------------------------------------

    async def _spool_loop(self) -> None:
        size = max(1, self.settings.batch_size)
        while True:
            if not self._spill:
                self._spilled.clear()
                await self._spilled.wait()
                continue
            if self._in_flight:  # the writer's batch is older: let it settle first
                await self._settled.wait()
                continue
            items = [self._spill.popleft() for _ in range(min(size, len(self._spill)))]
            self._spooling_now = len(items)
            records = []
            for item in items:
                record = self._record(item)
                if record is not None:
                    records.append(record)
                if not isinstance(item, Record):
                    await asyncio.sleep(0)
            try:
                await self.spool.append([r.line() for r in records])
            except (OSError, ProxyError) as exc:
                self._spill.extendleft(reversed(records))
                log.error(
                    "persistence: cannot write the spool %s (%s); %d records wait in memory",
                    self.spool.directory,
                    exc,
                    len(self._spill),
                )
                await asyncio.sleep(self.backoff[1])
                continue
            finally:
                self._spooling_now = 0
                self._progress.set()
            self.stats["spooled"] += len(records)
            self._report(f"{self.spool.depth} records in the spool")

    def _report(self, message: str) -> None:
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            self._reported = now
            log.info("persistence: %s", message)

    # -- the replay: spool -> MongoDB ----------------------------------------------------

    async def _replay_loop(self) -> None:
        delay = self.backoff[0]
        while True:
            if not self.spooling:
                self._diverted.clear()
                await self._diverted.wait()
                continue
            try:
                await self.store.ping()
                await self._replay()
                delay = self.backoff[0]
            except Unavailable as exc:
                log.info(
                    "persistence: MongoDB unreachable (%s); %d records in the spool; "
                    "next try in %gs",
                    exc,
                    self.spool.depth,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    async def _replay(self) -> None:
        started, replayed = time.monotonic(), 0
        log.info("persistence: MongoDB answers; replaying %d spooled records", self.spool.depth)
        while True:
            batch = await self.spool.read(max(1, self.settings.batch_size))
            if not batch.lines:
                if self.spool.depth:
                    continue  # appended since the read
                if not (self._spill or self._spooling_now or self._in_flight):
                    self.spooling = False
                    log.info(
                        "persistence: spool replayed (%d records in %.1fs); "
                        "writing to MongoDB directly again",
                        replayed,
                        time.monotonic() - started,
                    )
                    return
                self._progress.clear()
                await self._progress.wait()
                continue
            records = await self._decode(batch.lines)
            await write_replayed(self.store, self.filing, self.spool, self.stats, records)
            await self.spool.ack(batch)
            replayed += len(records)
            self.stats["replayed"] += len(records)
            self._report(f"replayed {replayed} records, {self.spool.depth} to go")

    async def _decode(self, lines: list[bytes]) -> list[Record]:
        records, bad = [], []
        for line in lines:
            try:
                records.append(Record.from_line(line))
            except ValueError:
                bad.append(line)
        if bad:
            log.error("persistence: %d unreadable spool lines set aside", len(bad))
            self.stats["rejected"] += len(bad)
            await self.spool.reject(bad)
        return records
