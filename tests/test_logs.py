"""The log as the operator gets it: text or JSON lines, and a file newsyslog may rotate."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from olbproxy.logs import Logs


def test_a_log_file_moved_away_by_newsyslog_is_reopened_without_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "olbproxy.log"
    logs = Logs("INFO", "text", path=str(path))
    log = logging.getLogger("olbproxy.test")
    logs.start()
    try:
        log.info("before the rotation")
        logs.flush()  # the writer thread has written it (the file stays open)
        path.rename(tmp_path / "olbproxy.log.0")  # what newsyslog does (flag N: no signal)
        log.info("after the rotation")
    finally:
        logs.stop()
    assert "before the rotation" in (tmp_path / "olbproxy.log.0").read_text()
    assert "after the rotation" not in (tmp_path / "olbproxy.log.0").read_text()
    assert "after the rotation" in path.read_text()


def test_json_lines_carry_every_record_not_only_access_lines(tmp_path: Path) -> None:
    path = tmp_path / "olbproxy.log"
    logs = Logs("INFO", "json", path=str(path))
    logs.start()
    try:
        logging.getLogger("olbproxy.server").warning("backend %s is out of rotation", "b1")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("olbproxy.app").exception("unhandled error")
    finally:
        logs.stop()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["level"], first["logger"]) == ("WARNING", "olbproxy.server")
    assert first["message"] == "backend b1 is out of rotation"
    assert second["message"].startswith("unhandled error\nTraceback")  # still one line
