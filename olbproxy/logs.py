"""The log: what ``serve`` and ``demo`` write to stderr, as text or as JSON lines.

``log_format: text`` (the default) gives ``time level logger: message`` lines;
``log_format: json`` gives one JSON object per line for log shippers:
``{"time", "level", "logger", "message"}``, and for access lines (access.py) their
fields in place of the message.

Records are formatted where they are logged, and their lines go in batches through a
queue to a thread that writes them (``_Batcher``, ``_Writer``): a slow terminal or a
pipe nobody reads must never hold the event loop that relays every stream.
``Logs.stop()`` flushes what is still queued. A request aiohttp cannot parse is one
warning line, not aiohttp's traceback (``MalformedRequests``).

With ``log_file`` the log goes to that file through a ``WatchedFileHandler``: when
newsyslog renames the file, the next record reopens the path, so rotation needs no
signal and no restart (a file launchd opened for stderr would be written past its
rotation until the job restarts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aiohttp.http import HttpProcessingError

from olbproxy.settings import LogFormat

# The LogRecord attribute that carries an access line's fields (``extra=``), so that
# the JSON formatter writes them as fields rather than as one string.
FIELDS = "olbproxy_fields"

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# An access line's fields (access.py), written as JSON fields or as ``key=value`` text.
Fields = dict[str, Any]


def iso_time(created: float) -> str:
    """``2026-12-05T08:43:59.571Z``: UTC, milliseconds, what log shippers parse."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self.formatException(record.exc_info)
            if record.stack_info:
                message += "\n" + self.formatStack(record.stack_info)
            data["message"] = message
        return json.dumps(data, ensure_ascii=False, default=str)

    def line(self, logger: str, created: float, message: str, fields: Fields | None) -> str:
        """What ``format`` makes of an INFO record of ``logger`` (see ``direct``)."""
        data: dict[str, Any] = {"time": iso_time(created), "level": "INFO", "logger": logger}
        if fields is not None:
            data.update(fields)
        else:
            data["message"] = message
        return json.dumps(data, ensure_ascii=False, default=str)


# Lines wait this long on the event loop before they go to the writer together.
BATCH_SECONDS = 0.05


class _Batcher(logging.Handler):
    """Formats each record where it is logged and hands the lines to the writer thread
    in batches: on the event loop, one hand-off per ``BATCH_SECONDS``.

    A hand-off per record (the stdlib's QueueHandler and QueueListener) woke the writer
    for every access line, and the two threads then traded the GIL thousands of times a
    second: the non-streaming bench measured 340 µs of CPU per request with the access
    log on against 262 µs with it off. Formatting costs the same on either thread; the
    batch saves the trading. Off the loop (a worker thread, start-up) a line goes at once.
    """

    def __init__(self, lines: queue.SimpleQueue[str | None]) -> None:
        super().__init__()
        self._out = lines
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # whose timer will flush

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock around this call.
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        self._schedule()

    def info(self, logger: str, message: str, fields: Fields | None) -> None:
        """An INFO line of ``logger`` without a LogRecord (see ``direct``): the line
        ``emit`` would have made of it, through the same batch."""
        formatter = self.formatter
        assert isinstance(formatter, _LINE_FORMATTERS)
        text = formatter.line(logger, time.time(), message, fields)
        self.acquire()
        try:
            self._lines.append(text)
            self._schedule()
        finally:
            self.release()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._hand_off()
            return
        if self._scheduled is loop:
            return
        # Not yet, or on a loop since gone (tests run one per test): a timer on this one.
        self._scheduled = loop
        loop.call_later(BATCH_SECONDS, self.flush)

    def _hand_off(self) -> None:
        if self._lines:
            self._out.put("\n".join(self._lines) + "\n")
            self._lines = []

    def flush(self) -> None:
        """Hand what waits to the writer now (the timer, Logs.flush and Logs.stop)."""
        self.acquire()
        try:
            self._scheduled = None
            self._hand_off()
        finally:
            self.release()


class _Writer:
    """The thread that writes the batches to the log's stream, in order."""

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self.handler = handler
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="olbproxy-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        if self._thread is not None:
            self.lines.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        handler = self.handler
        while (text := self.lines.get()) is not None:
            handler.acquire()
            try:
                if isinstance(handler, logging.handlers.WatchedFileHandler):
                    handler.reopenIfNeeded()  # newsyslog renamed the file: the new one
                handler.stream.write(text)
                handler.flush()
            except (OSError, ValueError):
                pass  # a closed stderr or a full disk: nowhere left to say so
            finally:
                handler.release()


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` with the stdlib's time stamp (``2026-12-05 08:43:59,571``), its
    date and clock made once per second rather than once per line: ``strftime`` was a
    fifth of an access line's cost, and every request writes one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second = -1
        self._clock = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._clock = time.strftime(self.default_time_format, self.converter(second))
        return f"{self._clock},{int(record.msecs):03d}"

    def line(self, logger: str, created: float, message: str, fields: Fields | None) -> str:
        """What ``format`` makes of an INFO record of ``logger`` (see ``direct``)."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._clock = time.strftime(self.default_time_format, self.converter(second))
        return f"{self._clock},{int((created - second) * 1000):03d} INFO    {logger}: {message}"


# For isinstance(): a tuple, not a union object built on every access line.
_LINE_FORMATTERS = (TextFormatter, JsonFormatter)


def direct(logger: logging.Logger) -> _Batcher | None:
    """The batcher, when it alone would write ``logger``'s INFO records unfiltered.

    Every request writes an access line. Making and dispatching its LogRecord (the
    record, Logger.handle, Handler.handle, Formatter.format) was 5 % of a small request's
    CPU in the proxy (py-spy, bench "whole"), and more than a third of the line's cost
    alone (9.7 against 6.2 µs, a text line in a loop): with only the process's own
    logging in place (``Logs.start``), access.py hands its lines to the batcher itself.
    Anything else listening (pytest's capture, a filter, a handler an embedding program
    added) gets records as before."""
    if logger.disabled or not logger.isEnabledFor(logging.INFO):
        return None
    found: _Batcher | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not _Batcher or handler.filters:
                return None
            if handler.level > logging.INFO:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it could not parse (and answers with 400) as an error with
    a traceback of its parser. It is a client's mistake, not the proxy's: one warning
    line, who and why. The bytes aiohttp quotes are left out: a malformed Authorization
    header is still a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            lines = (exc.message or type(exc).__name__).strip().splitlines()
            reason = lines[0].rstrip(" :") if lines else type(exc).__name__
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed request from %s (%d): %s"
            record.args = (peer, exc.code, reason)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class Logs:
    """The process's logging: batches of lines to one writer thread; stop() flushes."""

    def __init__(
        self,
        level: str,
        log_format: LogFormat,
        stream: TextIO | None = None,
        *,
        path: str | None = None,
    ) -> None:
        self.level = getattr(logging, level.upper(), logging.INFO)
        handler: logging.StreamHandler[Any]
        if path is not None:
            handler = logging.handlers.WatchedFileHandler(Path(path).expanduser(), encoding="utf-8")
        else:
            handler = logging.StreamHandler(stream or sys.stderr)
        self._target = handler
        self._writer = _Writer(handler)
        self._handler = _Batcher(self._writer.lines)
        self._handler.setFormatter(formatter(log_format))
        self._previous = logging.NOTSET
        self._flags = (True, True, True)
        self._running = False
        self._malformed = MalformedRequests()

    def start(self) -> None:
        self._running = True
        # Neither format prints a record's thread or process, and looking them up cost a
        # quarter of each record's making: one record per request (the logging HOWTO's
        # "Optimization" section names these switches).
        self._flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        root = logging.getLogger()
        self._previous = root.level
        root.setLevel(self.level)
        root.addHandler(self._handler)
        logging.getLogger("aiohttp.server").addFilter(self._malformed)
        self._writer.start()

    def flush(self) -> None:
        """Return once everything logged so far has been written."""
        if self._running:
            self._handler.flush()
            self._writer.stop()
            self._writer.start()

    def stop(self) -> None:
        """Flush and detach; calling it again does nothing."""
        if not self._running:
            return
        self._running = False
        root = logging.getLogger()
        root.removeHandler(self._handler)
        logging.getLogger("aiohttp.server").removeFilter(self._malformed)
        root.setLevel(self._previous)
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = self._flags
        self._handler.flush()
        self._writer.stop()  # writes what is still queued, then ends the thread
        if isinstance(self._target, logging.FileHandler):
            self._target.close()  # reopened if started again
