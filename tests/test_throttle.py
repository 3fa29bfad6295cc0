"""Throttle: a sliding window per key, counted before the check, taken back on success."""

from __future__ import annotations

import pytest

from olbproxy.auth.throttle import Throttle
from olbproxy.errors import TooManyRequests


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_window_slides_and_retry_after_says_when() -> None:
    clock = Clock()
    throttle = Throttle(3, 60.0, clock=clock)
    for _ in range(3):
        throttle.check("kim")
        throttle.record("kim")
        clock.now += 10
    with pytest.raises(TooManyRequests) as raised:
        throttle.check("kim")
    # The first attempt was at 1000; it leaves the window at 1060; now is 1030.
    assert raised.value.retry_after == pytest.approx(30.0)
    assert raised.value.headers() == {"Retry-After": "30"}
    throttle.check("lee")  # other keys are not affected
    clock.now = 1060.5
    throttle.check("kim")


def test_released_attempts_do_not_count() -> None:
    throttle = Throttle(2, 60.0, clock=Clock())
    for _ in range(10):
        throttle.check("kim")
        throttle.release("kim", throttle.record("kim"))
    throttle.check("kim")


def test_memory_stays_bounded_under_many_keys() -> None:
    throttle = Throttle(1, 60.0, clock=Clock(), max_keys=100)
    for i in range(1000):
        throttle.record(f"user{i}")
    assert len(throttle._attempts) <= 100
