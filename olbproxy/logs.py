"""The log: what ``serve`` and ``demo`` write to stderr, as text or as JSON lines.

``log_format: text`` (the default) gives ``time level logger: message`` lines;
``log_format: json`` gives one JSON object per line for log shippers:
``{"time", "level", "logger", "message"}``, and for access lines (access.py) their
fields in place of the message.

Records go through a queue to a thread that formats and writes them
(``QueueListener``): a slow terminal or a pipe nobody reads must never hold the event
loop that relays every stream. ``Logs.stop()`` flushes what is still queued.

With ``log_file`` the log goes to that file through a ``WatchedFileHandler``: when
newsyslog renames the file, the next record reopens the path, so rotation needs no
signal and no restart (a file launchd opened for stderr would be written past its
rotation until the job restarts).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from olbproxy.settings import LogFormat

# The LogRecord attribute that carries an access line's fields (``extra=``), so that
# the JSON formatter writes them as fields rather than as one string.
FIELDS = "olbproxy_fields"

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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
            # QueueHandler has already put any traceback into the message text.
            data["message"] = record.getMessage()
        return json.dumps(data, ensure_ascii=False, default=str)


class _Handoff(logging.handlers.QueueHandler):
    """Hands records to the writer thread with as little work as possible on the loop.

    The stock ``prepare`` formats the record and copies it; a record without a
    traceback only needs its message resolved (the writer formats it), which keeps an
    access line's cost on the event loop to a few microseconds.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info or record.stack_info:
            prepared: logging.LogRecord = super().prepare(record)  # traceback into the text
            return prepared
        if record.args:
            record.msg, record.args = record.getMessage(), None
        return record


def formatter(log_format: LogFormat) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


class Logs:
    """The process's logging: a queue in front of one stderr handler; stop() flushes."""

    def __init__(
        self,
        level: str,
        log_format: LogFormat,
        stream: TextIO | None = None,
        *,
        path: str | None = None,
    ) -> None:
        self.level = getattr(logging, level.upper(), logging.INFO)
        handler: logging.Handler
        if path is not None:
            handler = logging.handlers.WatchedFileHandler(Path(path).expanduser(), encoding="utf-8")
        else:
            handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(formatter(log_format))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._target = handler
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._handler = _Handoff(self._queue)
        self._previous = logging.NOTSET
        self._flags = (True, True, True)
        self._running = False

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
        self._listener.start()

    def flush(self) -> None:
        """Return once everything logged so far has been written."""
        if self._running:
            self._listener.stop()
            self._listener.start()

    def stop(self) -> None:
        """Flush and detach; calling it again does nothing."""
        if not self._running:
            return
        self._running = False
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._previous)
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = self._flags
        self._listener.stop()  # writes what is still queued, then ends the thread
        if isinstance(self._target, logging.FileHandler):
            self._target.close()  # reopened if started again
