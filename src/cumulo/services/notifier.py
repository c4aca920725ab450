"""Wakes agents that long-poll for their assignments when something for their host changes.

Services run in worker threads; waiters are asyncio tasks of the API's event loop. Versions
are per host and only ever grow within one API process; an agent compares for inequality,
so an API restart (versions back to 0) still wakes it correctly.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = defaultdict(int)
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
            defaultdict(list)
        )

    def version(self, host_id: str) -> int:
        with self._lock:
            return self._versions[host_id]

    def notify(self, host_id: str | None) -> None:
        if host_id is None:
            return
        with self._lock:
            self._versions[host_id] += 1
            waiters = self._waiters.pop(host_id, [])
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, host_id: str, since: int, timeout: float) -> int:
        """Return the host's version once it differs from `since`, or after `timeout`."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            current = self._versions[host_id]
            if current != since:
                return current
            self._waiters[host_id].append((loop, event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            with self._lock:
                waiters = self._waiters.get(host_id, [])
                if (loop, event) in waiters:
                    waiters.remove((loop, event))
        return self.version(host_id)
