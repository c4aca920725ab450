"""A watchdog over one awaitable: while it runs longer than it should, say where it waits.

An agent's reconcile pass that never ends stops the host (no long-poll, no report: the API
marks it down), and the only trace would be its silence. The chain of awaits of the stuck
pass, logged every `every_s`, names the call that does not return (a QMP command, a daemon,
a lock) in the agent's own log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("cumulo.agent")

T = TypeVar("T")


async def watched(coro: Coroutine[Any, Any, T], what: str, every_s: float) -> T:
    """`await coro`, logging `<what>_slow` with where it waits each `every_s` it runs."""
    task = asyncio.ensure_future(coro)
    started = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                return task.result()
            log.warning(f"{what}_slow", seconds=round(time.monotonic() - started),
                        waiting_in=waiting_in(coro))
    finally:
        if not task.done():  # we were cancelled (the agent stops): so is the pass
            task.cancel()


def waiting_in(coro: object) -> list[str]:
    """The chain of awaits of a suspended coroutine, outermost first (file:line function)."""
    out: list[str] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} "
                   f"{frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out
