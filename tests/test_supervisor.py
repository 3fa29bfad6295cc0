"""The supervisor: a background loop that fails is logged, restarted and shown."""

from __future__ import annotations

import asyncio

import pytest

from olbproxy.supervisor import Supervisor


async def test_a_failing_loop_is_restarted_and_its_failures_are_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(backoff=(0.01, 0.02))
    runs = 0
    healthy = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"unexpected failure {runs}")
        healthy.set()
        await asyncio.Event().wait()  # runs until cancelled

    supervisor.spawn("refresh", loop)
    await asyncio.wait_for(healthy.wait(), 5)
    job = supervisor.snapshot()["refresh"]
    assert job["state"] == "running" and job["restarts"] == 2
    assert job["last_error"] == "RuntimeError: unexpected failure 2"
    assert "background job refresh failed; restarting it" in caplog.text
    assert "Traceback" in caplog.text or caplog.records[0].exc_info is not None
    await supervisor.close()
    assert supervisor.snapshot()["refresh"]["state"] == "running"  # cancelled, not failed


async def test_a_one_shot_job_is_not_restarted_and_a_failure_stays_visible() -> None:
    supervisor = Supervisor(backoff=(0.01, 0.02))
    calls = 0

    async def warm() -> None:
        nonlocal calls
        calls += 1
        raise OSError("connection refused")

    async def fine() -> None:
        return None

    await asyncio.gather(
        supervisor.spawn("warmup", warm, restart=False),
        supervisor.spawn("warmup-ok", fine, restart=False),
        return_exceptions=True,
    )
    assert calls == 1
    jobs = supervisor.snapshot()
    assert jobs["warmup"]["state"] == "failed" and "warmup-ok" not in jobs
    await supervisor.close()
