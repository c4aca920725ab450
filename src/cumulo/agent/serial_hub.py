"""Every viewer of a VM's serial console shares one connection to its serial port.

QEMU serves a serial port to one client at a time, and a browser tab, a second tab and a
colleague's tab may all watch the same VM: the hub opens the port for the first viewer, copies
what the guest writes to every viewer, passes what any viewer types to the guest, and closes
the port when the last viewer leaves. A viewer that does not keep up (its queue is full) is
dropped rather than slowing the guest down: QEMU blocks the guest's serial output while its
client does not read.
"""

from __future__ import annotations

import asyncio
import contextlib

from cumulo.agent.drivers.base import Driver
from cumulo.agent.drivers.serial import SerialPort

QUEUE_CHUNKS = 1024  # chunks held for one viewer (up to ~4 MiB) before it is dropped


class Viewer:
    """One viewer of one VM's serial port: `output` yields the guest's bytes, then None."""

    def __init__(self, session: _Session) -> None:
        self._session = session
        self.output: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_CHUNKS)

    async def type(self, data: bytes) -> None:
        await self._session.port.write(data)

    async def leave(self) -> None:
        await self._session.leave(self)


class _Session:
    def __init__(self, hub: SerialHub, vm_id: str, port: SerialPort) -> None:
        self.hub = hub
        self.vm_id = vm_id
        self.port = port
        self.viewers: set[Viewer] = set()
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        """Copy the guest's output to every viewer until the port ends."""
        while True:
            data = await self.port.read()
            for viewer in list(self.viewers):
                try:
                    viewer.output.put_nowait(data or None)
                except asyncio.QueueFull:
                    self._drop(viewer)
            if not data:
                break
        self.hub.forget(self)
        await self.port.close()

    def _drop(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        with contextlib.suppress(asyncio.QueueEmpty):
            viewer.output.get_nowait()  # room for the end-of-stream mark
        viewer.output.put_nowait(None)

    async def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        if self.viewers:
            return
        self.hub.forget(self)
        self.pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.pump
        await self.port.close()


class SerialHub:
    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._sessions: dict[str, _Session] = {}
        # One open at a time (a unix socket connect: quick), so that two first viewers of a
        # VM cannot both open its port.
        self._opening = asyncio.Lock()

    async def join(self, vm_id: str) -> Viewer:
        """A new viewer of `vm_id`'s serial port (DriverError: the VM does not run)."""
        async with self._opening:
            session = self._sessions.get(vm_id)
            if session is None:
                port = await self._driver.open_serial(vm_id)
                session = self._sessions[vm_id] = _Session(self, vm_id, port)
            viewer = Viewer(session)
            session.viewers.add(viewer)
        return viewer

    def forget(self, session: _Session) -> None:
        if self._sessions.get(session.vm_id) is session:
            del self._sessions[session.vm_id]

    def open_ports(self) -> set[str]:
        """The VMs whose serial port the hub holds open now."""
        return set(self._sessions)
