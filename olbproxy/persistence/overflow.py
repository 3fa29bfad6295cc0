"""Overflow: the hand-off's frames on disk (``spool_dir/handoff``), fsync'd, while the
recording process cannot take them (handoff.py: ``queue_bytes`` of frames unsettled,
or a close), sent from there once it can again, or by the next start.

Lines are frames in base64, in the order their exchanges finished; the Handoff's
overflow loop fills it and sends from it; ``keep_for_the_next_start`` writes what a
close leaves, ahead of what waited on disk already.
"""

from __future__ import annotations

import base64
import logging
from collections import deque

from olbproxy.persistence.frame import resent
from olbproxy.persistence.spool import Batch, Spool

# The hand-off's logger: these lines are its story (the operator reads them together).
log = logging.getLogger("olbproxy.persistence.handoff")

OVERFLOW = "handoff"  # the overflow's directory, inside store.spool_dir
UNLOAD = 1024  # frames per read from the overflow (each acknowledgement is an fsync)


async def keep_for_the_next_start(
    overflow: Spool, unsettled: deque[bytes], held: list[bytes]
) -> None:
    """At close: the frames the process did not settle (ahead of what waits on disk
    already), then those held for the overflow, written to it for the next start."""
    left = [base64.b64encode(resent(frame)) for frame in unsettled]
    unsettled.clear()
    if not left and not held:
        return
    waiting = Batch([], (0, 0))
    if left and overflow.depth:
        # The unsettled frames are older than what waits on disk already: they go
        # before it (written again behind them, then the old copy acknowledged), so
        # the next start files the turns of a conversation in order.
        while len(waiting.lines) < overflow.depth:
            more = await overflow.read(overflow.depth, after=waiting if waiting.lines else None)
            if not more.lines:
                break
            waiting = Batch(waiting.lines + more.lines, more.end)
    left += waiting.lines
    left += [base64.b64encode(frame) for frame in held]
    held.clear()
    await overflow.append(left)
    if waiting.lines:
        await overflow.ack(waiting)
    log.warning(
        "persistence: %d records wait in %s for the next start",
        overflow.depth,
        overflow.directory,
    )
