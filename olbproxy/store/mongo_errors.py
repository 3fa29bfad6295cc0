"""The one mapping of MongoDB's errors to olbproxy's, for every MongoDB operation.

* no answer (no server, a dropped connection, the deadline passed): ``Unavailable``, 503,
  saying so without the database's address (pymongo's own message, some 600 characters
  with its whole topology description, stays on ``__cause__`` for the log);
* an answer that refuses (a bad document, a server-side error): ``ProxyError``, which
  the recorder sets aside instead of retrying forever.

Duplicate keys are the callers' business (``Conflict``, or "already written"): they catch
them inside the block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pymongo
from bson.errors import BSONError
from pymongo.errors import ConnectionFailure, PyMongoError

from olbproxy.errors import ProxyError, Unavailable

UNREACHABLE = "the database (MongoDB) is unreachable; try again shortly"


def short(exc: BaseException) -> str:
    """pymongo's message without its topology description."""
    return str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0][:200]


@contextlib.contextmanager
def mongo_errors(seconds: float | None = None) -> Iterator[None]:
    """Map what MongoDB raises in the block; ``seconds``: one deadline for all of it."""
    try:
        with pymongo.timeout(seconds):
            yield
    except ConnectionFailure as exc:
        raise Unavailable(UNREACHABLE) from exc
    except PyMongoError as exc:
        if exc.timeout:
            raise Unavailable(f"MongoDB did not answer in {seconds:g}s") from exc
        raise ProxyError(f"MongoDB refused the operation: {short(exc)}") from exc
    except (BSONError, OverflowError) as exc:  # over 16 MiB; an integer over 8 bytes
        raise ProxyError(f"MongoDB cannot store this document: {exc}") from exc
