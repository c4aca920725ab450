"""The agent's watchdog names where a slow awaitable waits, and returns its result."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from cumulo.agent.watchdog import watched


async def _stuck_in_here(release: asyncio.Event) -> str:
    await release.wait()
    return "done"


async def _outer(release: asyncio.Event) -> str:
    return await _stuck_in_here(release)


async def test_a_slow_pass_is_logged_with_where_it_waits() -> None:
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(0.35, release.set)
    with capture_logs() as logs:
        assert await watched(_outer(release), "reconcile_pass", 0.1) == "done"
    slow = [e for e in logs if e["event"] == "reconcile_pass_slow"]
    assert len(slow) >= 2, logs
    where = slow[0]["waiting_in"]
    assert [w.split()[-1] for w in where[:2]] == ["_outer", "_stuck_in_here"], where


async def test_a_quick_pass_says_nothing_and_errors_pass_through() -> None:
    async def boom() -> None:
        raise ValueError("no")

    with capture_logs() as logs, pytest.raises(ValueError):
        await watched(boom(), "reconcile_pass", 1.0)
    assert logs == []


async def test_cancelling_the_watch_cancels_the_pass() -> None:
    release = asyncio.Event()
    inner = asyncio.ensure_future(release.wait())

    async def waits() -> None:
        await inner

    watch = asyncio.ensure_future(watched(waits(), "reconcile_pass", 10))
    await asyncio.sleep(0.05)
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch
    await asyncio.sleep(0)
    assert inner.cancelled()
