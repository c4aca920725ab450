"""What the serial console's two WebSocket relays share (the agent's, to the VM's port, and
the API's, to the agent): the bytes a client sends, and running both directions until either
ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect


async def received_bytes(ws: WebSocket) -> AsyncIterator[bytes]:
    """What the client sends (binary, or text as UTF-8), until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                data = (msg.get("text") or "").encode()
            if data:
                yield data


async def until_either(*directions: Coroutine[Any, Any, None]) -> None:
    """Run every direction until one ends (its side closed); the others are cancelled."""
    tasks = {asyncio.create_task(d) for d in directions}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
