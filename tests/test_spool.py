"""The spool: append-only, fsync'd segments replayed in order, acknowledged by a cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from olbproxy.errors import StartupError
from olbproxy.persistence import spool as spool_module
from olbproxy.persistence.spool import Spool


def lines(*numbers: int) -> list[bytes]:
    return [b'{"n":%d}' % n for n in numbers]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.jsonl"))


@pytest.fixture(params=["disk", "memory"])
async def spool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool(tmp_path / "spool" if request.param == "disk" else None)
    await opened.open()
    yield opened
    await opened.close()


async def test_records_come_back_in_order_until_acknowledged(spool: Spool) -> None:
    await spool.append(lines(1, 2, 3))
    await spool.append(lines(4))
    assert spool.depth == 4
    first = await spool.read(3)
    assert first.lines == lines(1, 2, 3)
    assert (await spool.read(3)).lines == lines(1, 2, 3)  # not acknowledged: read again
    await spool.ack(first)
    assert spool.depth == 1
    rest = await spool.read(10)
    assert rest.lines == lines(4)
    await spool.ack(rest)
    assert spool.depth == 0 and (await spool.read(10)).lines == []


async def test_a_drained_spool_leaves_no_files_and_a_fresh_one_works(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory)
    await spool.open()
    assert not directory.exists()  # never used: no trace
    await spool.append(lines(1, 2))
    await spool.ack(await spool.read(10))
    assert sorted(p.name for p in directory.iterdir()) == [".lock"]
    await spool.append(lines(3))
    assert (await spool.read(10)).lines == lines(3)
    await spool.close()


async def test_the_spool_survives_a_restart_from_its_cursor(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append(lines(1, 2, 3, 4))
    await spool.ack(await spool.read(2))
    await spool.close()

    again = Spool(tmp_path)
    await again.open()
    assert again.depth == 2
    assert (await again.read(10)).lines == lines(3, 4)
    await again.append(lines(5))
    assert (await again.read(10)).lines == lines(3, 4, 5)
    await again.close()


async def test_a_partial_last_line_from_a_crash_is_cut_and_the_rest_replays(
    tmp_path: Path,
) -> None:
    segment = tmp_path / "0000000001.jsonl"
    segment.write_bytes(b'{"n":1}\n{"n":2}\n{"n":3}\n{"n":4, "answer": "cut short by a cra')
    spool = Spool(tmp_path)
    await spool.open()
    assert spool.depth == 3
    assert (await spool.read(10)).lines == lines(1, 2, 3)
    await spool.append(lines(5))  # appends after the cut, not onto the fragment
    assert (await spool.read(10)).lines == lines(1, 2, 3, 5)
    assert segment.read_bytes().endswith(b'{"n":3}\n{"n":5}\n')
    await spool.close()


async def test_segments_roll_and_are_deleted_once_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 20)
    spool = Spool(tmp_path)
    await spool.open()
    for n in range(1, 8):
        await spool.append(lines(n))  # 8 bytes a line: segments of 3, 3 and 1 lines
    segments = names(tmp_path)
    assert len(segments) == 3
    batch = await spool.read(5)
    assert batch.lines == lines(1, 2, 3, 4, 5)
    await spool.ack(batch)
    assert names(tmp_path) == segments[1:]
    await spool.close()

    again = Spool(tmp_path)
    await again.open()
    assert (again.depth, (await again.read(10)).lines) == (2, lines(6, 7))
    await again.close()


async def test_an_unreadable_cursor_replays_from_the_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.append(lines(1, 2))
    await spool.ack(await spool.read(1))
    await spool.close()
    (tmp_path / "cursor.json").write_text("{not json")
    again = Spool(tmp_path)
    await again.open()
    # Replaying twice is safe (the database ignores what it has); losing is not.
    assert (await again.read(10)).lines == lines(1, 2)
    await again.close()


async def test_one_process_per_spool_directory(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    await first.open()
    second = Spool(tmp_path)
    with pytest.raises(StartupError, match="in use by another olbproxy process"):
        await second.open()
    await first.close()
    await second.open()  # free again
    await second.close()


async def test_rejected_records_are_kept_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.open()
    await spool.reject(lines(9))
    assert (tmp_path / "rejected.jsonl").read_bytes() == b'{"n":9}\n'
    assert spool.depth == 0
    await spool.close()
