"""A host's long-poll ends when it is woken, or as soon as its agent disconnects: a dead
agent's request must not hold the API (its graceful shutdown waits for every request)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import Message

from cumulo.api.routers.agents import unless_gone
from cumulo.services.notifier import Notifier


def _request(gone: asyncio.Event) -> Request:
    messages: list[Message] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "GET", "path": "/", "headers": []}, receive)


async def test_a_long_poll_whose_agent_disconnects_ends_at_once() -> None:
    n, gone = Notifier(), asyncio.Event()
    poll = asyncio.create_task(unless_gone(_request(gone), n.wait("h", n.version("h"), 30)))
    await asyncio.sleep(0.05)
    assert not poll.done()
    gone.set()
    assert await asyncio.wait_for(poll, 5) is None
    # Its waiter went with it; a later wake-up finds nobody to wake.
    assert n._waiters.get("h", []) == []


async def test_a_woken_long_poll_returns_the_new_version() -> None:
    n, gone = Notifier(), asyncio.Event()
    before = n.version("h")
    poll = asyncio.create_task(unless_gone(_request(gone), n.wait("h", before, 30)))
    await asyncio.sleep(0.05)
    n.notify("h")
    assert await asyncio.wait_for(poll, 5) == before + 1
    assert n._waiters.get("h", []) == []
