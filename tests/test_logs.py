"""The log as the operator gets it: text or JSON lines, and a file newsyslog may rotate."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from conftest import StartProxy, StartSims, group, make_settings, until

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


def test_lines_logged_on_the_event_loop_are_all_written_in_order(tmp_path: Path) -> None:
    # They reach the writer thread in batches: none lost, none reordered, also from a
    # worker thread in between, and from a loop that has ended before its batch went.
    path = tmp_path / "olbproxy.log"
    logs = Logs("INFO", "text", path=str(path))
    log = logging.getLogger("olbproxy.test")

    async def burst(first: int) -> None:
        for n in range(first, first + 500):
            log.info("line %d", n)
        await asyncio.to_thread(log.info, "line %d", first + 500)

    async def written_without_a_flush() -> None:
        # A loop that ended with a batch pending must not keep this one's timer away.
        log.info("on another loop")
        await until(lambda: "on another loop" in path.read_text())  # the writer's file

    logs.start()
    try:
        asyncio.run(burst(0))
        asyncio.run(written_without_a_flush())
        asyncio.run(burst(501))
        logs.flush()
        lines = path.read_text().splitlines()
        numbers = [int(line.rsplit(" ", 1)[1]) for line in lines if "another" not in line]
        assert numbers == list(range(1002))
    finally:
        logs.stop()


async def test_a_request_that_cannot_be_parsed_is_one_warning_line(
    tmp_path: Path, start_sims: StartSims, start_proxy: StartProxy
) -> None:
    """aiohttp answers it 400 and logs its parser's traceback as an error; the operator
    gets one line saying who sent what kind of garbage, without the bytes (here a token)."""
    path = tmp_path / "olbproxy.log"
    logs = Logs("INFO", "text", path=str(path))
    logs.start()
    try:
        (sim,) = await start_sims(1)
        proxy = await start_proxy(make_settings(group("20b", ("gpt-oss:20b",), [sim])))
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET /api/tags HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sec-ret\rX: 1\r\n\r\n"
        )
        status = await reader.readline()
        writer.close()
    finally:
        logs.stop()
    assert status.split()[1] == b"400"
    text = path.read_text()
    (line,) = [x for x in text.splitlines() if "aiohttp.server" in x]
    assert line.split(" ", 2)[2] == (
        "WARNING aiohttp.server: refused a malformed request from 127.0.0.1 (400): "
        "Missing expected LF after header value"
    )
    assert "Traceback" not in text and "sec-ret" not in text
