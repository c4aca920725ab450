"""One long-lived QMP session per VM: it owns the monitor, serializes commands, keeps events.

QEMU's QMP monitor serves one client at a time, so every caller in this process that talks to
a VM goes through the same `QMPSession` (`session_for(sock)`): commands run one at a time, and
the events QEMU sends (MIGRATION, BLOCK_JOB_READY, JOB_STATUS_CHANGE, ...) are kept in a short
log that waiters follow, so block jobs and migrations are followed by events, not polling.

The session connects lazily and reconnects whenever its connection is down (QEMU restarted, or
a new agent process after the old one died: the monitor accepts the new client once the old
connection is closed). Every failure becomes a DriverError naming the socket and the command.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError, Runstate

from cumulo.agent.counters import QMP_ERRORS
from cumulo.agent.drivers.base import DriverError

# qemu.qmp logs every disconnect/EOF at WARNING/ERROR; our callers report failures themselves.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

EVENT_LOG = 256  # events kept per VM (waiters read them by sequence number)
Event = dict[str, Any]  # {"event": NAME, "data": {...}, "seq": N}


class QMPSession:
    """The one connection to the monitor of one VM (bound to the event loop that made it)."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._client: QMPClient | None = None
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._seq = itertools.count(1)
        self._events: collections.deque[Event] = collections.deque(maxlen=EVENT_LOG)
        self._changed = asyncio.Condition()

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event kept (0 when none): wait for later ones."""
        return self._events[-1]["seq"] if self._events else 0

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 1.0
    ) -> Any:
        """Run one command and return its "return" value.

        `quit` is special: QEMU closes the connection right after (or even before) answering,
        so a lost connection after sending it counts as success.
        """
        async with self._lock:
            for attempt in (1, 2):
                fresh = self._client is None or self._client.runstate is not Runstate.RUNNING
                client = await self._connected(timeout)
                try:
                    return await asyncio.wait_for(client.execute(command, arguments), timeout)
                except ExecuteError as exc:  # QEMU answered with an error
                    raise DriverError(
                        f"QMP {command} on {self.sock} failed: {_describe(exc)}") from exc
                except (QMPError, OSError, TimeoutError, EOFError) as exc:
                    lost = not isinstance(exc, TimeoutError)
                    await self._drop()  # the next command reconnects
                    if lost and not fresh and attempt == 1:
                        continue  # a connection that went stale: the command never left
                    if command == "quit" and lost:
                        return {}  # QEMU closes the monitor as it quits
                    raise DriverError(
                        f"QMP {command} on {self.sock} failed: {_describe(exc)}") from exc
            raise AssertionError("unreachable")

    async def wait_event(
        self, match: Callable[[Event], bool], *, after: int, timeout: float
    ) -> Event:
        """The first event later than sequence `after` that `match`es; DriverError on timeout.

        The session must be connected (any command connects it) for events to arrive.
        """
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                for event in self._events:
                    if event["seq"] > after and match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DriverError(f"no awaited QMP event from {self.sock} in {timeout:g}s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    async def reset(self) -> None:
        """Drop the connection (the VM's QEMU was replaced); the next command reconnects."""
        async with self._lock:
            await self._drop()

    async def _connected(self, timeout: float) -> QMPClient:
        if self._client is not None and self._client.runstate is Runstate.RUNNING:
            return self._client
        await self._drop()
        client = QMPClient(f"cumulo-{self.sock.parent.name}")
        try:
            await asyncio.wait_for(client.connect(str(self.sock)), timeout)
        except (QMPError, OSError, TimeoutError) as exc:
            await _disconnect(client)
            raise DriverError(
                f"cannot connect to QMP socket {self.sock}: {_describe(exc)}"
            ) from exc
        self._client = client
        self._pump = asyncio.create_task(self._follow(client), name=f"qmp-events-{self.sock}")
        return client

    async def _follow(self, client: QMPClient) -> None:
        while True:
            message = await client.events.get()
            data = message.get("data")
            event: Event = {
                "event": str(message.get("event", "")),
                "data": dict(data) if isinstance(data, dict) else {},
                "seq": next(self._seq),
            }
            async with self._changed:
                self._events.append(event)
                self._changed.notify_all()

    async def _drop(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
            self._pump = None
        if self._client is not None:
            await _disconnect(self._client)
            self._client = None


_SESSIONS: dict[Path, QMPSession] = {}


def session_for(sock: Path) -> QMPSession:
    """This process's session for the monitor at `sock` (made on first use)."""
    key = Path(sock).absolute()
    session = _SESSIONS.get(key)
    if session is None or session.loop is not asyncio.get_running_loop():
        session = _SESSIONS[key] = QMPSession(key)
    return session


async def close_session(sock: Path) -> None:
    """Forget the session of a VM whose runtime files are gone."""
    session = _SESSIONS.pop(Path(sock).absolute(), None)
    if session is not None and session.loop is asyncio.get_running_loop():
        await session.reset()


async def qmp_execute(
    sock: Path,
    command: str,
    arguments: dict[str, Any] | None = None,
    *,
    timeout: float = 1.0,
) -> Any:
    """Run one command through the VM's session (see QMPSession.execute); a failure counts
    in the agent's QMP error metric."""
    try:
        return await session_for(sock).execute(command, arguments, timeout=timeout)
    except DriverError:
        QMP_ERRORS.labels(command=command).inc()
        raise


async def _disconnect(client: QMPClient) -> None:
    with contextlib.suppress(QMPError, OSError, TimeoutError, EOFError):
        await asyncio.wait_for(client.disconnect(), 1.0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or getattr(exc, "exc", None)
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text
