"""Creates that arrive together are written together.

Every create pays for the same reads before its own rows: the zone lock, every host's capacity,
the project, image, network and security groups; then a commit. When creates arrive faster
than they are written, the ones that queued meanwhile share one transaction
(`instances.create_many`: each in a savepoint, so an error stays its request's own).

Nothing waits to fill a batch: a create that finds no batch running starts one with whatever
is queued (on a quiet cloud, itself alone), so it pays no added latency. Under load a batch is
what queued while the previous one ran: on PostgreSQL while its worker thread waited for the
server, on SQLite while the event loop served other requests before this task's turn.
"""

from __future__ import annotations

import asyncio

from cumulo.api.threads import service
from cumulo.domain.errors import CumuloError
from cumulo.services import instances
from cumulo.services.context import Services
from cumulo.services.views import InstanceView

# A batch holds SQLite's write lock (and, inline, the event loop) for this many creates at
# most: about 2 ms each in the control-plane benchmark. There, batches held 8 creates on
# average and 20 (every client) at most.
MAX_BATCH = 32


class CreateBatcher:
    """One per API process (its event loop)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._queue: list[tuple[instances.CreateCall, asyncio.Future[InstanceView]]] = []
        self._running: asyncio.Task[None] | None = None

    async def create(self, call: instances.CreateCall) -> InstanceView:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[InstanceView] = loop.create_future()
        self._queue.append((call, result))
        if self._running is None:
            self._running = loop.create_task(self._drain())
        return await result

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    outcomes = await service(self.svc, instances.create_many, self.svc,
                                             [call for call, _ in batch])
                except Exception as e:  # the database's: every create of the batch failed
                    for _, result in batch:
                        if not result.done():
                            result.set_exception(e)
                    continue
                for (_, result), outcome in zip(batch, outcomes, strict=True):
                    if result.done():  # its request was cancelled; the instance stays
                        continue
                    if isinstance(outcome, CumuloError):
                        result.set_exception(outcome)
                    else:
                        result.set_result(outcome)
        finally:
            self._running = None
